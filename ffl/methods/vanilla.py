"""Vanilla: every sub-network trained alone with cross-entropy (independent, no shared layers)."""

from __future__ import annotations

from ffl.losses import ce_terms
from ffl.methods.base import Method
from ffl.methods.registry import register_method


@register_method
class Vanilla(Method):
    name = "vanilla"
    reference = "one network trained alone with cross-entropy (the poster's baseline row)"
    subnets = (1, None)
    default_subnets = 1
    sharing = "independent"
    stackable = True

    def forward(self, images):
        return self.named_subnets(self.net(images)[1])

    def loss(self, outputs, targets, epoch):
        return ce_terms(self.sub_outputs(outputs), targets)
