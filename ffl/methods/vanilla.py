"""Vanilla: every sub-network trained alone with cross-entropy (independent, no shared layers)."""

from __future__ import annotations

from ffl.losses import cross_entropy
from ffl.methods.base import Method


class Vanilla(Method):
    name = "vanilla"

    def __init__(self, archs: list[str], num_classes: int, shared: bool = False, ce_weight: float = 1.0):
        if shared:
            raise ValueError("vanilla trains independent networks: shared low-level layers would couple them")
        super().__init__(archs, num_classes, shared, ce_weight=ce_weight)
        self.ce_weight = ce_weight

    def forward(self, images):
        return self.named_subnets(self.net(images)[1])

    def loss(self, outputs, targets, epoch):
        return {
            f"ce_sub{i}": self.ce_weight * cross_entropy(outputs[f"sub{i}"], targets) for i in range(self.num_subnets)
        }
