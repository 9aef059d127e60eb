"""PCL: the peer ensemble teacher, the temporal means (EMA after each step), one view per peer."""

import pytest
import torch

from ffl.losses import kd_loss, sigmoid_rampup
from ffl.methods.pcl import PCL


def test_loss_terms_by_hand():
    method = PCL(["resnet8"] * 3, num_classes=3, temperature=2.0, rampup_epochs=10, mean_weight=0.5)
    subs = [torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])]
    means = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])]
    ensemble = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    out = {**{f"sub{i}": z for i, z in enumerate(subs)}, **{f"mean{i}": z for i, z in enumerate(means)}}
    terms = method.loss({**out, "ensemble": ensemble}, y, epoch=3)
    w = sigmoid_rampup(3, 10)
    ce = torch.nn.functional.cross_entropy
    assert terms["ce_ensemble"].item() == pytest.approx(ce(ensemble, y).item())
    assert terms["kd_ensemble_sub1"].item() == pytest.approx(w * kd_loss(subs[1], ensemble, 2.0).item(), rel=1e-6)
    # peer 0 learns from the other peers' temporal means, averaged
    expected = w * 0.5 * (kd_loss(subs[0], means[1], 2.0) + kd_loss(subs[0], means[2], 2.0)).item() / 2
    assert terms["kd_mean_sub0"].item() == pytest.approx(expected, rel=1e-6)
    assert len(terms) == 1 + 3 + 3 + 3


def test_the_temporal_mean_follows_the_mean_teacher_schedule():
    torch.manual_seed(0)
    method = PCL(["resnet8"] * 2, num_classes=3, ema_decay=0.9)
    live, mean = method.net.trunk[0].weight, method.mean_net.trunk[0].weight
    with torch.no_grad():
        live.fill_(1.0)
        mean.fill_(5.0)
    method.after_step()  # step 1: min(1 - 1/1, 0.9) = 0 of the old mean: a copy
    assert torch.all(mean == 1.0)
    with torch.no_grad():
        live.fill_(3.0)
    method.after_step()  # step 2: keep min(1 - 1/2, 0.9) = 0.5
    assert torch.allclose(mean, torch.full_like(mean, 2.0))
    with torch.no_grad():
        method.ema_steps.fill_(99)
        live.fill_(12.0)
    method.after_step()  # step 100: keep min(0.99, 0.9) = 0.9
    assert torch.allclose(mean, torch.full_like(mean, 0.9 * 2.0 + 0.1 * 12.0))


def test_the_temporal_mean_is_kept_but_never_optimised():
    method = PCL(["resnet8"] * 3, num_classes=3)
    optimised = {id(p) for g in method.param_groups(1e-4) for p in g["params"]}
    assert not any(id(p) in optimised for p in method.mean_net.parameters())
    assert id(method.classifier.weight) in optimised
    state = method.state_dict()
    assert "ema_steps" in state and any(k.startswith("mean_net.") for k in state)  # checkpoints carry it
    assert PCL.deployed(3, method.settings) == "mean0"


def test_each_peer_and_its_mean_see_their_own_view():
    torch.manual_seed(0)
    method = PCL(["resnet8"] * 3, num_classes=4).train()
    views = torch.randn(6, 3, 32, 32)  # three views of a batch of two
    out = method(views)
    for i in range(3):
        view = views[2 * i : 2 * i + 2]
        torch.testing.assert_close(out[f"sub{i}"], method.net.forward_one(i, view))
        torch.testing.assert_close(out[f"mean{i}"], method.mean_net.forward_one(i, view))
    pooled = torch.cat(
        [method.net.branches[i](method.net.trunk(views[2 * i : 2 * i + 2])).mean((2, 3)) for i in range(3)], 1
    )
    torch.testing.assert_close(out["ensemble"], method.classifier(pooled))


def test_the_deployed_temporal_mean_exports_alone():
    torch.manual_seed(0)
    method = PCL(["resnet8"] * 3, num_classes=4)
    method.after_step()
    with torch.no_grad():
        method.net.trunk[0].weight.add_(1.0)  # the live network moves on: the export must not follow it
    method.eval()
    x = torch.randn(2, 3, 32, 32)
    alone = method.standalone("mean0")
    torch.testing.assert_close(alone(x), method(x)["mean0"])
    mean_params = {id(p) for p in method.mean_net.parameters()}
    assert all(id(p) in mean_params for p in alone.parameters())  # nothing of the live peers
