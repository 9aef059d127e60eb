"""KDCL: the soft target built from every network's logits, each network on its own view."""

import pytest
import torch

from ffl.losses import kd_loss
from ffl.methods.kdcl import KDCL, min_logit, naive


def test_min_logit_by_hand():
    a = torch.tensor([[3.0, 1.0, 0.0]])
    b = torch.tensor([[1.0, 2.0, -2.0]])
    # target 0: a - 3 = [0, -2, -3], b - 1 = [0, 1, -3]; element-wise min = [0, -2, -3]
    assert min_logit([a, b], torch.tensor([0])).tolist() == [[0.0, -2.0, -3.0]]
    # target 1: a - 1 = [2, 0, -1], b - 2 = [-1, 0, -4]; min = [-1, 0, -4]
    assert min_logit([a, b], torch.tensor([1])).tolist() == [[-1.0, 0.0, -4.0]]


def test_naive_takes_the_network_with_the_lowest_cross_entropy_per_sample():
    a = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 4.0]])
    assert naive([a, b], torch.tensor([0, 1])).tolist() == [[3.0, 0.0], [0.0, 4.0]]


def test_loss_terms_by_hand_with_a_detached_target():
    method = KDCL(["resnet8"] * 2, num_classes=3, temperature=2.0, kd_weight=0.5)
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    terms = method.loss({"sub0": a, "sub1": b, "ensemble": (a + b) / 2}, y, epoch=0)
    teacher = min_logit([a.detach(), b.detach()], y)
    assert terms["kd_sub1"].item() == pytest.approx(0.5 * kd_loss(b, teacher, 2.0).item(), rel=1e-6)
    assert terms["ce_sub0"].item() == pytest.approx(torch.nn.functional.cross_entropy(a, y).item())
    terms["kd_sub0"].backward()
    assert b.grad is None  # the other network learns nothing from a's KL term: the target is detached


def test_each_network_sees_its_own_view():
    torch.manual_seed(0)
    method = KDCL(["resnet8", "resnet8"], num_classes=4).train()
    assert KDCL.train_views(2, method.settings) == 2
    views = torch.randn(6, 3, 32, 32)  # two views of a batch of three
    out = method(views)
    for i in range(2):  # network i on the rows of view i, normalised by that view's batch statistics
        torch.testing.assert_close(out[f"sub{i}"], method.net.forward_one(i, views[3 * i : 3 * i + 3]))
    assert KDCL.train_views(2, KDCL.Settings(distinct_views=False)) == 1
