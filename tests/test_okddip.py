"""OKDDip (DefangChen/OKDDip): attention-weighted peer teachers, the leader taught by the peers' mean."""

import math

import pytest
import torch

from ffl.losses import sigmoid_rampup
from ffl.methods import build_method
from ffl.methods.okddip import OKDDip, PeerAttention


def kl(teacher, student, t):  # T^2 KL(softmax(teacher/T) || softmax(student/T)), batch mean, by hand
    total = 0.0
    for p_row, q_row in zip(teacher.tolist(), student.tolist()):
        p = [math.exp(v / t) for v in p_row]
        q = [math.exp(v / t) for v in q_row]
        p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        total += sum(a * math.log(a / b) for a, b in zip(p, q))
    return t * t * total / len(teacher)


def test_attention_weighs_the_peers_by_softmaxed_query_key_products():
    attention = PeerAttention(channels=2, factor=1)
    with torch.no_grad():
        attention.query.weight.copy_(torch.eye(2))
        attention.key.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    pooled = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # one sample, three peers
    weights = attention(pooled)[0]
    # row i: softmax_j(q_i . k_j), q = pooled, k = pooled @ diag(1, 2); the peer itself included
    keys = [[1.0, 0.0], [0.0, 2.0], [1.0, 2.0]]
    for i, q in enumerate(pooled[0].tolist()):
        energy = [q[0] * k[0] + q[1] * k[1] for k in keys]
        expected = [math.exp(e) / sum(math.exp(x) for x in energy) for e in energy]
        assert weights[i].tolist() == pytest.approx(expected, rel=1e-6)


def test_loss_terms_equal_the_codes_recipe_by_hand():
    method = OKDDip(["resnet8"] * 4, num_classes=3, temperature=2.0, rampup_epochs=10, kd_weight=0.5)
    subs = [
        torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]),
        torch.tensor([[1.0, 1.0, -1.0], [0.5, 0.0, 1.0]]),
        torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]),  # the leader
    ]
    teachers = torch.stack([subs[1], subs[2], subs[0]], dim=1)  # peer i's attention-weighted teacher
    y = torch.tensor([0, 2])
    ensemble = (subs[0] + subs[1] + subs[2]) / 3
    outputs = {**{f"sub{i}": z for i, z in enumerate(subs)}, "leader": subs[3], "ensemble": ensemble}
    terms = method.loss({**outputs, "_peer_teachers": teachers}, y, epoch=4)
    w = 0.5 * sigmoid_rampup(4, 10)
    assert set(terms) == {"ce_sub0", "ce_sub1", "ce_sub2", "ce_sub3", "kd_sub0", "kd_sub1", "kd_sub2", "kd_leader"}
    ce = torch.nn.functional.cross_entropy
    assert terms["ce_sub3"].item() == pytest.approx(ce(subs[3], y).item())  # the leader's CE, unweighted sum
    assert terms["kd_sub0"].item() == pytest.approx(w * kl(subs[1], subs[0], 2.0), rel=1e-5)
    assert terms["kd_sub2"].item() == pytest.approx(w * kl(subs[0], subs[2], 2.0), rel=1e-5)
    assert terms["kd_leader"].item() == pytest.approx(w * kl(ensemble, subs[3], 2.0), rel=1e-5)


def test_the_attention_learns_through_the_targets_as_in_the_code():
    torch.manual_seed(0)
    method = build_method({"method": "okddip", "archs": ["resnet8"] * 4, "num_classes": 5, "settings": {}})
    method.train()
    out = method(torch.randn(6, 3, 32, 32))
    assert torch.equal(out["leader"], out["sub3"])
    assert torch.allclose(out["ensemble"], (out["sub0"] + out["sub1"] + out["sub2"]) / 3)
    terms = method.loss(out, torch.randint(0, 5, (6,)), epoch=100)
    sum(v for k, v in terms.items() if k.startswith("kd")).backward()  # the KL terms alone
    assert method.attention.query.weight.grad.abs().sum() > 0 and method.attention.key.weight.grad.abs().sum() > 0
    method.eval()
    assert "_peer_teachers" not in method(torch.randn(2, 3, 32, 32))  # training's intermediate only


def test_okddip_deploys_its_leader_and_needs_two_peers():
    assert OKDDip.deployed(4, OKDDip.Settings()) == "leader"
    with pytest.raises(ValueError, match="at least 3 sub-networks"):
        OKDDip(["resnet8"] * 2, num_classes=3)


def test_the_leader_exports_alone():
    torch.manual_seed(0)
    method = OKDDip(["resnet8"] * 4, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    alone = method.standalone("leader")
    torch.testing.assert_close(alone(x), method(x)["leader"])
    assert not any(p is q for p in alone.parameters() for q in method.net.branches[0].parameters())


def test_an_attention_factor_above_the_channels_is_refused():
    from ffl.errors import SettingError

    with pytest.raises(SettingError, match="more than resnet8's 64 feature channels"):
        OKDDip(["resnet8"] * 3, num_classes=3, attention_factor=65)
