"""MCL held to a port of the authors' code (tests/mcl_reference.py): the same loss terms and the
same gradients on the same weights and batch, and what the port cannot show (anchors without a
positive, fp32 embeddings under autocast, which network ships)."""

import copy

import pytest
import torch

from ffl import MCL
from ffl.contrastive import contrastive, masks
from tests import mcl_reference as ref

TOL = {"rtol": 1e-5, "atol": 1e-6}  # fp32, the same operations in another order


def balanced_batch(n=12, classes=6, seed=0):
    """Two images of every class, as the code's MPerClassSampler draws them (every anchor has a positive)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % classes


def reference_forward(net):
    def forward(images):
        feats, logits = net(images)
        return logits, [f.mean((2, 3)) for f in feats]

    return forward


@pytest.mark.parametrize(
    ("networks", "logit_kd"), [(2, False), (2, True), (3, True)], ids=["mcl-x2", "mcl-x2-logit-kd", "mcl-x3-logit-kd"]
)
def test_loss_terms_and_gradients_match_the_authors_code(networks, logit_kd):
    torch.manual_seed(0)
    method = MCL(["resnet8"] * networks, num_classes=6, logit_kd=logit_kd).train()
    twin = copy.deepcopy(method)
    args = ref.args_for(twin)
    criterion = ref.Sup_MCL_Loss(args)
    for mine, theirs in zip(twin.embeds, criterion.embed_list, strict=True):
        theirs.proj_head.load_state_dict(mine.proj_head.state_dict())
    images, targets = balanced_batch()

    terms = method.loss(method(images), targets, epoch=0)
    theirs = ref.train_loss(reference_forward(twin.net), criterion, args, images, targets)

    for name in ("vcl", "soft_vcl", "icl", "soft_icl"):
        torch.testing.assert_close(terms[name], theirs[name], **TOL)
    ce = sum(v for k, v in terms.items() if k.startswith("ce_"))
    kd = sum((v for k, v in terms.items() if k.startswith("kd_")), torch.tensor(0.0))
    torch.testing.assert_close(ce, theirs["cls"], **TOL)
    torch.testing.assert_close(kd, theirs["logit_kd"], **TOL)
    if logit_kd and networks > 2:  # the code distils only the last network when there are more than two
        assert [k for k in terms if k.startswith("kd_")] == [f"kd_sub{networks - 1}"]

    sum(terms.values()).backward()
    theirs["loss"].backward()
    mine = dict(method.net.named_parameters()) | {f"embeds.{k}": p for k, p in method.embeds.named_parameters()}
    other = dict(twin.net.named_parameters())
    other |= {f"embeds.{i}.{k}": p for i, e in enumerate(criterion.embed_list) for k, p in e.named_parameters()}
    assert mine.keys() == other.keys()
    for name, p in mine.items():
        torch.testing.assert_close(p.grad, other[name].grad, **TOL, msg=name)


def test_an_anchor_without_a_positive_is_left_out_of_the_mean():
    logits = torch.tensor([[5.0, 1.0, 2.0], [1.0, 5.0, 0.0], [2.0, 0.0, 5.0]])
    positives, others = masks(torch.tensor([0, 0, 1]))  # sample 2's class appears once
    # Anchor 0: positive 1 among {1, 2}: -(1 - log(e^1 + e^2)); anchor 1: positive 0 among {0, 2}.
    a0 = -(1.0 - torch.log(torch.tensor(2.0).exp() + torch.tensor(1.0).exp()))
    a1 = -(1.0 - torch.log(torch.tensor(1.0).exp() + torch.tensor(0.0).exp()))
    torch.testing.assert_close(contrastive(logits, positives, others), (a0 + a1) / 2)
    lonely = masks(torch.tensor([0, 1, 2]))
    assert contrastive(logits, *lonely).item() == 0.0  # no anchor has a positive: nothing to learn, not NaN


def test_embeddings_are_unit_fp32_under_bf16_autocast():
    method = MCL(["resnet8", "resnet8"], num_classes=4).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(torch.randn(4, 3, 32, 32))
    for i in range(2):
        assert out[f"_embed{i}"].dtype == torch.float32 and out[f"_embed{i}"].shape == (4, 128)
        torch.testing.assert_close(out[f"_embed{i}"].norm(dim=1), torch.ones(4))
    assert not any(k.startswith("_") for k in method.eval()(torch.randn(2, 3, 32, 32)))


def test_two_networks_are_independent_more_share_their_low_layers_and_one_ships():
    assert not MCL(["resnet8"] * 2, num_classes=4).net.shared
    assert MCL(["resnet8"] * 4, num_classes=4).net.shared
    assert not MCL(["resnet8", "resnet14"], num_classes=4).net.shared
    assert MCL.deployed(2, MCL.Settings()) == "sub0"
    method = MCL(["resnet8"] * 2, num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(method.standalone("sub0")(images), method(images)["sub0"])
