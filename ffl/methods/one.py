"""On-the-fly Native Ensemble (Lan, Zhu, Gong, NeurIPS 2018; code: Lan1991Xu/ONE_NeurIPS2018).

Branches over shared low-level layers (stem, stages 1-2); a gate (global pool of the shared
features -> linear -> BN -> ReLU -> softmax, as in the authors' code) weighs the branch logits into
the gated ensemble teacher ("ensemble", the ONE-E column). CE on every branch and on the ensemble;
KL(ensemble || branch) summed over branches with temperature T, T^2 and the ramp-up; the teacher
is detached, so the gate learns from the ensemble's CE alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffl.losses import ce_terms, cross_entropy, kd_loss, kd_weight
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting

CODE = "Lan1991Xu/ONE_NeurIPS2018"


@dataclass(frozen=True, kw_only=True)
class ONESettings:
    temperature: float = setting(3.0, "KD temperature (terms scaled by T^2)", f"{CODE} loss/kl_loss.py", gt=0)
    rampup_epochs: float = setting(
        80.0,
        "sigmoid ramp-up of the KD weight, in epochs (of 300); 0 = none",
        f"{CODE} scripts: --consistency_rampup 80",
        ge=0,
    )
    ce_weight: float = setting(1.0, "weight of every cross-entropy term", f"{CODE} cifar_one.py: unweighted", ge=0)
    kd_weight: float = setting(1.0, "weight of each branch's KL term", f"{CODE} cifar_one.py: unweighted", ge=0)
    gate_weight_decay: float | None = setting(
        None, "the gate's weight decay; null = train.weight_decay", f"{CODE} cifar_one.py: one parameter group", ge=0
    )


class Gate(nn.Module):
    def __init__(self, in_channels: int, branches: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, branches)
        self.bn = nn.BatchNorm1d(branches)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, shared):
        return torch.softmax(self.relu(self.bn(self.fc(torch.flatten(self.pool(shared), 1)))), dim=1)


@register_method
class ONE(Method):
    name = "one"
    Settings = ONESettings
    reference = "Lan et al., Knowledge Distillation by On-the-Fly Native Ensemble, NeurIPS 2018; code " + CODE
    differences = (
        "The authors' code trains without Nesterov and drops the lr at epochs 151 and 225: these are the "
        "shared train settings (train.nesterov, train.milestones), set by the ONE presets.",
        "For depth >= 44 the authors' CIFAR ResNet uses Bottleneck blocks (their 'ResNet-110' has 164 layers); "
        "this project's resnet<6n+2> is BasicBlock at every depth, as in FFL's code.",
        "The code normalises CIFAR-100 with CIFAR-10's mean and std; this project uses each dataset's own.",
    )
    subnets = (2, None)
    default_subnets = 3
    sharing = "shared"

    flat_settings = ("temperature", "rampup_epochs", "ce_weight", "kd_weight")

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        self.gate = Gate(self.net.low_channels, len(archs))

    def auxiliary_modules(self):
        return [self.gate]

    def aux_weight_decay(self):
        return self.settings.gate_weight_decay

    def forward(self, images):
        shared = self.net.forward_trunk(images)
        _, logits = self.net.forward_branches(shared)
        out = self.named_subnets(logits)
        weights = self.gate(shared)  # (B, N)
        out["ensemble"] = torch.einsum("bn,nbc->bc", weights.to(logits[0].dtype), torch.stack(logits))
        return out

    def loss(self, outputs, targets, epoch):
        s = self.settings
        subs = self.sub_outputs(outputs)
        terms = ce_terms(subs, targets, s.ce_weight)
        terms["ce_ensemble"] = s.ce_weight * cross_entropy(outputs["ensemble"], targets)
        for i, z in enumerate(subs):
            terms[f"kd_sub{i}"] = kd_weight(s, epoch, s.kd_weight) * kd_loss(z, outputs["ensemble"], s.temperature)
        return terms
