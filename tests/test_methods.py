"""The method pinned down: loss terms, where gradients go, heterogeneous and N = 3 fusion, ablations."""

import contextlib

import numpy as np
import pytest
import torch

from ffl.fusion import FusionModule
from ffl.losses import kd_loss, sigmoid_rampup
from ffl.methods import DML, FFL, METHODS, ONE, DualNet, Vanilla, build_method
from ffl.models import SubNetworks

TINY = "resnet8"


def grads_of(module):
    return [p.grad for p in module.parameters()]


def has_grad(module):
    return any(g is not None and g.abs().sum() > 0 for g in grads_of(module))


def test_ffl_loss_terms_equal_the_hand_computed_recipe():
    method = FFL(
        [TINY, TINY], num_classes=3, temperature=2.0, rampup_epochs=10, ekd={"weight": 0.5}, fkd={"weight": 2.0}
    )
    sub0 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    sub1 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    fused = torch.tensor([[1.0, 1.0, -1.0], [0.5, 0.0, 1.0]])
    y = torch.tensor([0, 2])
    outputs = {"sub0": sub0, "sub1": sub1, "ensemble": (sub0 + sub1) / 2, "fused": fused}
    terms = method.loss(outputs, y, epoch=5)
    ce = torch.nn.functional.cross_entropy
    w = sigmoid_rampup(5, 10)
    assert set(terms) == {"ce_sub0", "ce_sub1", "ce_fused", "ekd", "fkd_sub0", "fkd_sub1"}
    assert terms["ce_sub0"].item() == pytest.approx(ce(sub0, y).item())
    assert terms["ce_fused"].item() == pytest.approx(ce(fused, y).item())
    assert terms["ekd"].item() == pytest.approx(w * 0.5 * kd_loss(fused, (sub0 + sub1) / 2, 2.0).item())
    assert terms["fkd_sub1"].item() == pytest.approx(w * 2.0 * kd_loss(sub1, fused, 2.0).item())


def test_gradients_reach_the_fusion_module_and_every_branch(images, targets):
    method = FFL([TINY, TINY], num_classes=4)
    terms = method.loss(method(images), targets, epoch=100)
    torch.stack(list(terms.values())).sum().backward()
    assert has_grad(method.fusion)
    for branch in method.net.branches:
        assert has_grad(branch)
    assert has_grad(method.net.trunk)


def test_shared_layers_receive_gradients_from_every_branch(images, targets):
    method = FFL([TINY, TINY], num_classes=4)
    for i in range(2):
        method.zero_grad()
        out = method(images)
        method.loss(out, targets, epoch=0)[f"ce_sub{i}"].backward()
        assert has_grad(method.net.trunk), f"branch {i} sends no gradient to the shared layers"
        assert has_grad(method.net.branches[i]) and not has_grad(method.net.branches[1 - i])


def test_kd_teachers_are_detached(images, targets):
    method = FFL([TINY, TINY], num_classes=4)
    out = method(images)
    method.loss(out, targets, epoch=100)["ekd"].backward()  # ensemble -> fused: only the fusion side learns
    assert has_grad(method.fusion)
    assert not has_grad(method.net.heads)
    method.zero_grad()
    out = method(images)
    method.loss(out, targets, epoch=100)["fkd_sub0"].backward()  # fused -> sub0: the fusion module is the teacher
    assert not has_grad(method.fusion)
    assert has_grad(method.net.heads[0]) and not has_grad(method.net.heads[1])


def test_heterogeneous_subnetworks_fuse(images, targets):
    method = FFL(["resnet8", "wrn10_2"], num_classes=4, shared=False)
    assert method.net.out_channels == [64, 128]
    assert method.fusion.in_channels == [64, 128]
    out = method(images)
    assert out["fused"].shape == (4, 4)
    torch.stack(list(method.loss(out, targets, 0).values())).sum().backward()
    assert all(has_grad(b) for b in method.net.branches)


def test_three_subnetworks(images, targets):
    method = FFL([TINY] * 3, num_classes=4, fusion={"width": 32})
    out = method(images)
    assert set(out) == {"sub0", "sub1", "sub2", "ensemble", "fused"}
    assert method.fusion.in_channels == [64, 64, 64] and method.fusion.width == 32
    terms = method.loss(out, targets, 0)
    assert {"fkd_sub0", "fkd_sub1", "fkd_sub2", "ekd"} <= set(terms)


@pytest.mark.parametrize(
    ("switch", "removed"),
    [
        ({"ekd": {"enabled": False}}, {"ekd"}),
        ({"fkd": {"enabled": False}}, {"fkd_sub0", "fkd_sub1"}),
        ({"fusion": {"enabled": False}, "ekd": {"enabled": False}}, {"ekd"}),
    ],
)
def test_each_ablation_switch_removes_exactly_its_term(switch, removed, images, targets):
    full = set(FFL([TINY, TINY], num_classes=4).loss(FFL([TINY, TINY], num_classes=4)(images), targets, 0))
    method = FFL([TINY, TINY], num_classes=4, **switch)
    out = method(images)
    assert set(method.loss(out, targets, 0)) == full - removed


def test_without_fusion_module_the_fused_output_is_the_plain_ensemble(images):
    method = FFL([TINY, TINY], num_classes=4, fusion={"enabled": False}, ekd={"enabled": False})
    out = method(images)
    assert method.fusion is None
    assert torch.equal(out["fused"], out["ensemble"])
    with pytest.raises(ValueError, match="EKD"):
        FFL([TINY, TINY], num_classes=4, fusion={"enabled": False})


def test_fusion_refuses_maps_of_different_spatial_sizes():
    with pytest.raises(ValueError, match="spatial"):
        FFL(["resnet8", "resnet18"], num_classes=4, shared=False)
    fm = FusionModule([8, 8], num_classes=3)
    with pytest.raises(ValueError, match="spatial"):
        fm([torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)])


def test_fusion_module_is_depthwise_then_pointwise():
    fm = FusionModule([64, 128], num_classes=10, kernel_size=5)
    dw, pw = fm.depthwise[0], fm.pointwise[0]
    assert dw.groups == 192 and dw.kernel_size == (5, 5) and dw.bias is None
    assert pw.in_channels == 192 and pw.out_channels == 64 and pw.kernel_size == (1, 1)
    assert fm([torch.randn(2, 64, 8, 8), torch.randn(2, 128, 8, 8)]).shape == (2, 10)


def test_fusion_module_gets_its_own_weight_decay():
    method = FFL([TINY, TINY], num_classes=4)
    groups = method.param_groups(1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-5]
    fusion_ids = {id(p) for p in method.fusion.parameters()}
    assert {id(p) for p in groups[1]["params"]} == fusion_ids
    assert not fusion_ids & {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(method.parameters()))


def test_shared_branches_share_parameters_and_independent_nets_do_not():
    shared = SubNetworks([TINY, TINY], 10, shared=True)
    indep = SubNetworks([TINY, TINY], 10, shared=False)
    n_shared = sum(p.numel() for p in shared.parameters())
    n_indep = sum(p.numel() for p in indep.parameters())
    assert n_shared < n_indep
    with pytest.raises(ValueError, match="one architecture"):
        SubNetworks(["resnet8", "resnet14"], 10, shared=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_follows_the_contract(name, images):
    """Each registered method: named outputs of the batch's size, every loss term positive past
    the ramp-ups, and gradients to every trained parameter (its views, where it takes several).
    Every class of the batch appears twice: a contrastive term (MCL) needs a positive per anchor."""
    targets = torch.tensor([0, 1, 0, 1])
    cls = METHODS[name]
    method = cls([TINY] * cls.default_subnets, num_classes=4).train()
    views = cls.train_views(cls.default_subnets, method.settings)
    out = method(images.repeat(views, 1, 1, 1))  # each view of the 4 images, one after the other
    classifiers = {k: z for k, z in out.items() if not k.startswith("_")}  # "_...": the method's own, for its loss
    assert set(classifiers) == set(cls.outputs(cls.default_subnets, method.settings))
    assert all(z.shape == (4, 4) for z in classifiers.values())
    terms = method.loss(out, targets, epoch=1000)  # past every ramp-up
    for term, value in terms.items():
        assert value.item() > 0, f"{name}: {term} is zero"
    torch.stack(list(terms.values())).sum().backward()
    assert has_grad(method)


def test_every_method_file_is_registered_and_exported():
    import pkgutil

    import ffl
    import ffl.methods

    files = {m.name for m in pkgutil.iter_modules(ffl.methods.__path__)} - {"base", "registry", "settings"}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in METHODS.values()} == files
    for cls in METHODS.values():
        assert getattr(ffl.methods, cls.__name__) is cls and getattr(ffl, cls.__name__) is cls
        assert cls.__name__ in ffl.methods.__all__ and cls.__name__ in ffl.__all__


def test_dml_kd_is_towards_the_other_peers_at_temperature_one():
    method = DML([TINY, TINY, TINY], num_classes=3)
    assert method.settings.temperature == 1.0 and method.settings.rampup_epochs == 0
    subs = [torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]), torch.zeros(2, 3), torch.tensor([[0.0, 0.0, 3.0]] * 2)]
    out = {f"sub{i}": z for i, z in enumerate(subs)}
    terms = method.loss(out, torch.tensor([0, 1]), 0)

    def kl(p_logits, q_logits):  # KL(softmax(p) || softmax(q)), batch mean, by hand
        p, q = p_logits.softmax(1), q_logits.softmax(1)
        return (p * (p.log() - q.log())).sum(1).mean()

    expected = (kl(subs[1], subs[0]) + kl(subs[2], subs[0])) / 2  # the peers are the targets of sub0
    assert terms["kd_sub0"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["kd_sub0"].item() != pytest.approx(((kl(subs[0], subs[1]) + kl(subs[0], subs[2])) / 2).item())


def test_dml_alternating_update_is_each_peer_in_turn_after_a_fresh_forward_pass(images, targets):
    """Peer 0 steps on the old peer 1; peer 1 then steps on peer 0's new prediction (by hand)."""
    import copy

    from ffl.methods.base import frozen_bn_statistics

    torch.manual_seed(0)
    method = DML([TINY, TINY], num_classes=4)
    manual = copy.deepcopy(method)
    opt = torch.optim.SGD(method.param_groups(0.0), lr=0.5)

    class Ctx:
        autocast = staticmethod(contextlib.nullcontext)

        @staticmethod
        def update(loss):
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    method.train_step(images, targets, 0.0, Ctx)

    nets = [torch.nn.Sequential(manual.net.branches[i], manual.net.heads[i]) for i in range(2)]
    z0, z1 = nets[0](images), nets[1](images)
    loss0 = torch.nn.functional.cross_entropy(z0, targets) + kd_loss(z0, z1, 1.0)
    loss0.backward()
    with torch.no_grad():
        for p in nets[0].parameters():
            p -= 0.5 * p.grad
    with torch.no_grad(), frozen_bn_statistics(nets[0]):
        z0_new = nets[0](images)
    loss1 = torch.nn.functional.cross_entropy(z1, targets) + kd_loss(z1, z0_new, 1.0)
    loss1.backward()
    with torch.no_grad():
        for p in nets[1].parameters():
            p -= 0.5 * p.grad
    for (k, v), w in zip(method.state_dict().items(), manual.state_dict().values()):
        if not k.endswith("num_batches_tracked"):
            assert torch.allclose(v, w, atol=1e-6), k
    assert DML([TINY, TINY], 4, update="joint").own_step is False and method.own_step is True


def test_one_gate_weighs_branches_into_the_ensemble(images):
    method = ONE([TINY] * 3, num_classes=4)
    out = method(images)
    w = method.gate(method.net.forward_trunk(images))
    assert torch.allclose(w.sum(1), torch.ones(4))
    assert torch.allclose(out["ensemble"], sum(w[:, i : i + 1] * out[f"sub{i}"] for i in range(3)), atol=1e-5)


def _updated(method, images, targets):
    method.zero_grad()
    out = method(images)
    terms = method.loss(out, targets, 0)
    torch.stack(list(terms.values())).sum().backward()
    return [has_grad(b) for b in method.net.branches], has_grad(method.fused_head), terms, out


def test_dualnet_weights_its_three_classifiers_per_phase(images, targets):
    ce = torch.nn.functional.cross_entropy
    method = DualNet([TINY, TINY], num_classes=4, finetune_fraction=0.2)
    method.set_epoch(0, 10)
    first, head, terms, out = _updated(method, images, targets)
    assert first == [True, False] and head
    assert set(terms) == {"ce_fused", "ce_sub0"}  # the active network's auxiliary CE, weighted 0.3
    assert terms["ce_sub0"].item() == pytest.approx(0.3 * ce(out["sub0"], targets).item(), rel=1e-5)
    assert torch.allclose(out["weighted"], out["fused"] + 0.3 * (out["sub0"] + out["sub1"]))
    assert torch.allclose(out["average"], (out["sub0"] + out["sub1"] + out["fused"]) / 3)
    assert method.step_phase() == 0
    method.end_step()  # the engine ends every training step so: the other network's turn
    assert method.step_phase() == 1 and _updated(method, images, targets)[0] == [False, True]
    method.set_epoch(8, 10)  # joint fine-tuning: both networks and all three classifiers
    method.end_step()
    assert method.step_phase() == "finetune"
    both, head, terms, _ = _updated(method, images, targets)
    assert both == [True, True] and head and set(terms) == {"ce_fused", "ce_sub0", "ce_sub1"}
    only_head = DualNet([TINY, TINY], num_classes=4, finetune_fraction=0.2, finetune="fused_head")
    only_head.set_epoch(8, 10)
    nets, head, terms, _ = _updated(only_head, images, targets)
    assert nets == [False, False] and head and set(terms) == {"ce_fused"}


def test_dualnet_averages_the_two_feature_maps(images):
    method = DualNet([TINY, TINY], num_classes=4).eval()
    feats, _ = method.net(images)
    assert torch.allclose(method(images)["fused"], method.fused_head((feats[0] + feats[1]) / 2))


def test_spec_rebuilds_the_same_method(images):
    method = FFL(["resnet8", "wrn10_2"], num_classes=4, shared=False, temperature=4.0)
    method.eval()
    clone = build_method(method.spec())
    clone.load_state_dict(method.state_dict())
    clone.eval()
    assert torch.equal(clone(images)["fused"], method(images)["fused"])


def test_epoch_metrics_are_batch_weighted_means_and_percentages():
    from ffl.data import DeviceLoader, Split
    from ffl.engine import TrainConfig, Trainer

    class Fixed(Vanilla):
        """Loss 2.0 on every batch; sub0 predicts class 0, which is right for the first 6 of 10 images."""

        def forward(self, images):
            logits = torch.zeros(len(images), 3)
            logits[:, 0] = 1.0
            return {"sub0": logits + 0 * self.net(images)[1][0].sum()}

        def loss(self, outputs, targets, epoch):
            return {"ce_sub0": outputs["sub0"].sum() * 0 + 2.0}

    images = np.zeros((10, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0] * 6 + [1] * 4)
    loader = DeviceLoader(Split(images, labels), batch_size=4, mean=(0, 0, 0), std=(1, 1, 1))  # 4 + 4 + 2
    metrics = Trainer(Fixed([TINY], 3), loader, TrainConfig(epochs=1, milestones=[])).train_epoch(0)
    assert metrics["train/loss/ce_sub0"] == pytest.approx(2.0)
    assert metrics["train/loss/total"] == pytest.approx(2.0)
    assert metrics["train/top1_err/sub0"] == pytest.approx(40.0)


def test_a_captured_step_is_refused_where_it_cannot_replay_exactly():
    from ffl.data import DeviceLoader, Split
    from ffl.engine import TrainConfig, Trainer

    split = Split(np.zeros((5, 3, 32, 32), np.uint8), np.zeros(5, int))
    with pytest.raises(ValueError, match="this run is on cpu"):
        Trainer(Vanilla([TINY], 3), DeviceLoader(split, 5, (0,) * 3, (1,) * 3), TrainConfig(cuda_graph=True))
    with pytest.raises(ValueError, match="several times per batch"):
        Trainer(DML([TINY, TINY], 3), DeviceLoader(split, 5, (0,) * 3, (1,) * 3), TrainConfig(compile="default"))


def test_milestones_beyond_the_run_are_said():
    """The library's TrainConfig keeps the paper's [150, 225]: a short run given them never drops its lr."""
    from ffl.data import DeviceLoader, Split
    from ffl.engine import TrainConfig, Trainer

    split = Split(np.zeros((5, 3, 32, 32), np.uint8), np.zeros(5, int))
    with pytest.warns(UserWarning, match=r"milestones \[150, 225\] lie at or beyond the last epoch \(20 epochs\)"):
        Trainer(Vanilla([TINY], 3), DeviceLoader(split, 5, (0,) * 3, (1,) * 3), TrainConfig(epochs=20))


def test_the_step_graph_warm_up_leaves_no_trace(images, targets):
    """What a captured step replays from must be the state before its warm-up steps (checked on the
    CPU, where CI runs; the capture itself is tested on a GPU in test_cuda.py)."""
    import copy

    from ffl.step_graph import StepGraph

    def sgd(m):
        return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)

    method = FFL([TINY, TINY], 4)
    untouched = copy.deepcopy(method)
    opt, untouched_opt = sgd(method), sgd(untouched)
    graph = StepGraph(lambda x, y: None, method, opt)

    def step(m=method, o=opt):
        o.zero_grad()
        sum(m.loss(m(images), targets, 0).values()).backward()
        o.step()

    fresh = graph._snapshot()
    assert fresh["momentum"] == {}
    step(), step()
    graph._restore(fresh)
    for k, v in method.state_dict().items():
        assert torch.equal(v, fresh["model"][k]), k
    # A zeroed momentum buffer gives exactly SGD's first update (no dampening).
    step(), step(untouched, untouched_opt)
    for (k, v), w in zip(method.state_dict().items(), untouched.state_dict().values()):
        assert torch.equal(v, w), k

    step()
    resumed = graph._snapshot()
    step()
    graph._restore(resumed)
    for p, s in opt.state.items():
        assert torch.equal(s["momentum_buffer"], resumed["momentum"][p])
