"""On-the-fly Native Ensemble (Lan et al., NeurIPS 2018).

Branches over shared low-level layers; a gate (global pool of the shared features -> linear ->
BN -> ReLU -> softmax, as in the authors' code) weighs the branch logits into the gated ensemble
teacher ("ensemble", the ONE-E column). CE on every branch and on the ensemble; KL(ensemble ||
branch) with temperature, T^2 and the ramp-up; the teacher is detached.
"""

from __future__ import annotations

import torch
from torch import nn

from ffl.losses import cross_entropy, kd_loss, sigmoid_rampup
from ffl.methods.base import PeerDistillation


class Gate(nn.Module):
    def __init__(self, in_channels: int, branches: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, branches)
        self.bn = nn.BatchNorm1d(branches)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, shared):
        return torch.softmax(self.relu(self.bn(self.fc(torch.flatten(self.pool(shared), 1)))), dim=1)


class ONE(PeerDistillation):
    name = "one"

    def __init__(
        self,
        archs: list[str],
        num_classes: int,
        shared: bool = True,
        temperature: float = 3.0,
        rampup_epochs: float = 80.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
    ):
        if len(archs) < 2:
            raise ValueError(f"ONE needs at least 2 branches, got {len(archs)}")
        if not shared:
            raise ValueError("ONE's gate reads the shared low-level features: its branches must share them")
        super().__init__(archs, num_classes, shared, temperature, rampup_epochs, ce_weight, kd_weight)
        self.gate = Gate(self.net.low_channels, len(archs))

    def auxiliary_modules(self):
        return [self.gate]

    def forward(self, images):
        shared = self.net.forward_trunk(images)
        _, logits = self.net.forward_branches(shared)
        out = self.named_subnets(logits)
        weights = self.gate(shared)  # (B, N)
        out["ensemble"] = torch.einsum("bn,nbc->bc", weights.to(logits[0].dtype), torch.stack(logits))
        return out

    def loss(self, outputs, targets, epoch):
        subs = [outputs[f"sub{i}"] for i in range(self.num_subnets)]
        terms = {f"ce_sub{i}": self.ce_weight * cross_entropy(z, targets) for i, z in enumerate(subs)}
        terms["ce_ensemble"] = self.ce_weight * cross_entropy(outputs["ensemble"], targets)
        ramp = sigmoid_rampup(epoch, self.rampup_epochs)
        for i, z in enumerate(subs):
            terms[f"kd_sub{i}"] = ramp * self.kd_weight * kd_loss(z, outputs["ensemble"], self.temperature)
        return terms
