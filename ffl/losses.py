"""Loss pieces shared by the methods: temperature-scaled KD with a detached teacher, the ramp-up."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float, teacher_grad: bool = False
) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2, batch mean; the teacher gets no gradient
    unless ``teacher_grad`` (OKDDip's code trains its attention through the targets).

    T^2 keeps the gradient scale independent of T (Hinton et al. 2015). Computed in fp32 so that
    bf16 autocast does not round the soft targets.
    """
    t = temperature
    log_p_student = F.log_softmax(student.float() / t, dim=1)
    p_teacher = F.softmax((teacher if teacher_grad else teacher.detach()).float() / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * (t * t)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


def ce_terms(logits: list[torch.Tensor], targets: torch.Tensor, weight: float = 1.0) -> dict[str, torch.Tensor]:
    """``{"ce_sub<i>": weight * CE}`` for every sub-network's logits: the loss terms (and the
    curves' names, train/loss/ce_sub0 ...) every method has."""
    return {f"ce_sub{i}": weight * cross_entropy(z, targets) for i, z in enumerate(logits)}


def kd_weight(settings, epoch, weight: float):
    """A KD term's weight at ``epoch``: ``weight`` times the method's sigmoid ramp-up
    (``settings.rampup_epochs``). One product, so that every method ramps its KD terms alike."""
    return sigmoid_rampup(epoch, settings.rampup_epochs) * weight


def sigmoid_rampup(epoch, length: float):
    """exp(-5 (1 - min(e, R)/R)^2): the mean-teacher ramp-up that ONE and FFL weigh KD with.

    ``length`` 0 switches the ramp-up off (weight 1 from the start). ``epoch`` may be a 0-d
    tensor: a compiled training step then takes it as an input instead of recompiling per epoch.
    """
    if length <= 0:
        return 1.0
    if isinstance(epoch, torch.Tensor):
        phase = 1.0 - epoch.clamp(0.0, length) / length
        return torch.exp(-5.0 * phase * phase)
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)
