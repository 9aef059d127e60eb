"""L-MCL held to a port of the authors' code (tests/lmcl_reference.py): the loss terms and gradients
of a step, and the meta step's update of the pair weights, on the same weights and batch."""

import contextlib
import copy

import pytest
import torch

from ffl import LMCL
from ffl.errors import SettingError
from tests import lmcl_reference as ref

LR, DECAY = 0.1, 5e-4
TOL = {"rtol": 1e-5, "atol": 1e-6}  # fp32, the same operations in another order
# The meta step is compared in fp64: its hypergradient goes through Hessian-vector products of
# ReLU networks, and in fp32 the rounding of another order of sums flips activations near zero
# (weights moved by 1e-6 move it by 10% at initialisation). In fp64 the two agree to 1e-16.
META_TOL = {"rtol": 1e-9, "atol": 1e-12}


@pytest.fixture
def fp64(monkeypatch):
    """Everything in fp64, the project's casts to fp32 included (they keep heads and losses in fp32
    under autocast; here they would cut the comparison to fp32's rounding)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    monkeypatch.setattr(torch.Tensor, "float", lambda self: self.to(torch.float64))
    yield
    torch.set_default_dtype(before)


class Ctx:
    """What the engine hands an own-step method: the optimiser (the code's main SGD) and ``update``."""

    def __init__(self, method):
        self.optimizer = torch.optim.SGD(method.param_groups(DECAY), lr=LR, momentum=0.9, nesterov=True)

    def autocast(self):
        return contextlib.nullcontext()

    def update(self, loss):
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def batch(n=12, classes=6, seed=0):
    """Two images of every class, as the code's MPerClassSampler draws them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % classes


def twins(**settings):
    torch.manual_seed(0)
    method = LMCL(["resnet8", "resnet8"], num_classes=6, **settings).train()
    twin = copy.deepcopy(method)
    return method, twin, ref.build(twin, LR, DECAY)


def test_loss_terms_and_gradients_match_the_authors_code():
    method, twin, theirs = twins()
    images, targets = batch()
    terms = method.loss(method(images), targets, epoch=0)
    expected = ref.train_loss(theirs, images, targets)
    for name in ("vcl", "soft_vcl", "icl", "soft_icl"):
        torch.testing.assert_close(terms[name], expected[name], **TOL)
    torch.testing.assert_close(sum(v for k, v in terms.items() if k.startswith("ce_")), expected["cls"], **TOL)
    torch.testing.assert_close(sum(v for k, v in terms.items() if k.startswith("kd_")), expected["logit_kd"], **TOL)

    sum(terms.values()).backward()
    expected["loss"].backward()
    assert all(p.grad is None for p in method.pair_weights.parameters())  # they learn in the meta step alone
    for name, p, q in counterparts(method, twin, theirs):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


def counterparts(method, twin, theirs):
    """(name, the method's parameter, the port's) for every parameter the step trains."""
    pairs = [(n, p, q) for (n, p), (_, q) in zip(method.named_parameters(), twin.named_parameters(), strict=True)]
    for i, heads in enumerate(theirs.criterion_mcl.embed_list):  # the port's heads and aggregator are its own
        for s, head in enumerate(heads):
            for (n, q), p in zip(head.proj_head.named_parameters(), method.embeds[i][s].proj_head.parameters()):
                pairs.append((f"embeds.{i}.{s}.{n}", p, q))
    for i, head in enumerate(method.aggregator.heads):
        for (n, q), p in zip(getattr(theirs.aggregator, f"proj_head_{i}").named_parameters(), head.parameters()):
            pairs.append((f"aggregator.{i}.{n}", p, q))
    return [(n, p, q) for n, p, q in pairs if q.grad is not None or not n.startswith(("embeds", "aggregator"))]


def test_a_step_with_its_meta_step_matches_the_authors_code(fp64):
    """Batch 0 of an epoch: the step, then the meta step on the same batch. The networks end where
    the step left them, the batch-norm statistics one forward further, the pair weights stepped."""
    method, twin, theirs = twins()
    images, targets = batch()
    optimizer = torch.optim.SGD(
        [*theirs.net.parameters(), *theirs.criterion_mcl.parameters(), *theirs.aggregator.parameters()],
        lr=LR, momentum=0.9, weight_decay=DECAY, nesterov=True,
    )  # fmt: skip
    optimizer.zero_grad()
    ref.train_loss(theirs, images, targets)["loss"].backward()
    optimizer.step()
    ref.meta_step(theirs, images, targets)

    method.set_epoch(0, 1)
    ctx = Ctx(method)
    method.train_step(images, targets, torch.tensor(0.0), ctx)

    for name, mine in method.pair_weights.state_dict().items():
        torch.testing.assert_close(mine, theirs.weight_net.state_dict()[name], **META_TOL, msg=name)
    assert not torch.equal(method.pair_weights.proj[0][0].weight, twin.pair_weights.proj[0][0].weight)
    for (name, p), (_, q) in zip(method.net.state_dict().items(), theirs.net.net.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, **TOL, msg=name)  # weights and running statistics
    for (name, p), (_, q) in zip(method.aux.state_dict().items(), theirs.net.aux.state_dict().items(), strict=True):
        torch.testing.assert_close(p, q, **TOL, msg=name)


def test_meta_steps_come_every_meta_every_steps_of_an_epoch():
    method = LMCL(["resnet8", "resnet8"], num_classes=6, meta_every=2).train()
    images, targets = batch()
    ctx = Ctx(method)
    seen = []
    method.meta_step = lambda *a: seen.append(method._step_in_epoch)
    for epoch in range(2):
        method.set_epoch(epoch, 2)
        for _ in range(3):
            method.train_step(images, targets, torch.tensor(float(epoch)), ctx)
    assert seen == [0, 2, 0, 2]


def test_exits_are_reported_and_the_final_one_ships():
    method = LMCL(["resnet8", "resnet8"], num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    out = method(images)
    assert set(out) == set(LMCL.outputs(2, method.settings)) and not any(k.startswith("_") for k in out)
    assert LMCL.deployed(2, method.settings) == "sub0"
    torch.testing.assert_close(method.standalone("sub0")(images), out["sub0"])
    with pytest.raises(SettingError, match="auxiliary exits"):
        LMCL(["resnet18", "resnet18"], num_classes=4)


def test_the_network_mean_leaves_the_auxiliary_exits_out():
    from pipeline.stages.evaluate import summarise

    errors = {name: {"top1_err": e, "top5_err": e / 2} for name, e in [("sub0", 30.0), ("sub1", 20.0)]}
    errors |= {"sub0_exit1": {"top1_err": 90.0, "top5_err": 80.0}, "agg0": {"top1_err": 10.0, "top5_err": 5.0}}
    assert summarise(errors)["test"]["top1_err"]["sub_mean"] == 25.0
