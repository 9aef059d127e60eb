import math

import pytest
import torch

from ffl.losses import kd_loss, sigmoid_rampup


def test_kd_loss_matches_hand_computed_value():
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    t = 2.0
    p = torch.softmax(teacher / t, 1)[0].tolist()
    q = torch.softmax(student / t, 1)[0].tolist()
    expected = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss(student, teacher, t).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_scaled_by_t_squared():
    z = torch.randn(5, 10)
    assert kd_loss(z, z.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    s, te = torch.randn(5, 10), torch.randn(5, 10)
    # Same soft targets at T, T^2 factor: the value at T equals the unscaled KL times T^2.
    unscaled = kd_loss(s / 3.0, te / 3.0, 1.0)
    assert kd_loss(s, te, 3.0).item() == pytest.approx(9.0 * unscaled.item(), rel=1e-5)


def test_kd_loss_gives_the_teacher_no_gradient():
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    kd_loss(student, teacher, 3.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(80, 80) == 1.0
    assert sigmoid_rampup(200, 80) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0
