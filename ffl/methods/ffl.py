"""Feature Fusion Learning (Kim et al., ICPR 2020).

Sub-networks (branches over shared low-level layers, or independent networks of any
architectures) and a fusion module over their last feature maps. Losses: CE on every classifier;
EKD: the sub-networks' mean logits teach the fused classifier; FKD: the fused classifier teaches
every sub-network. KD terms use temperature T, T^2 scaling, detached teachers and the sigmoid
ramp-up. ``fusion=False`` is the poster's "no FM" ablation: the fused output is the plain
ensemble, and EKD (ensemble -> itself) has nothing to teach, so it must be off.
"""

from __future__ import annotations

import torch

from ffl.fusion import FusionModule
from ffl.losses import cross_entropy, kd_loss, sigmoid_rampup
from ffl.methods.base import Method
from ffl.models.subnetworks import check_fusable


class FFL(Method):
    name = "ffl"

    def __init__(
        self,
        archs: list[str],
        num_classes: int,
        shared: bool = True,
        fusion: bool = True,
        fusion_width: int | None = None,
        fusion_kernel_size: int = 3,
        temperature: float = 3.0,
        rampup_epochs: float = 80.0,
        ce_weight: float = 1.0,
        ekd: bool = True,
        ekd_weight: float = 1.0,
        fkd: bool = True,
        fkd_weight: float = 1.0,
    ):
        if len(archs) < 2:
            raise ValueError(f"FFL needs at least 2 sub-networks, got {len(archs)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if ekd and not fusion:
            raise ValueError("EKD distils the ensemble into the fusion module: it needs fusion on")
        if fusion:
            check_fusable(archs)
        super().__init__(
            archs,
            num_classes,
            shared,
            fusion=fusion,
            fusion_width=fusion_width,
            fusion_kernel_size=fusion_kernel_size,
            temperature=temperature,
            rampup_epochs=rampup_epochs,
            ce_weight=ce_weight,
            ekd=ekd,
            ekd_weight=ekd_weight,
            fkd=fkd,
            fkd_weight=fkd_weight,
        )
        self.fusion = (
            FusionModule(self.net.out_channels, num_classes, fusion_width, fusion_kernel_size) if fusion else None
        )
        self.temperature = temperature
        self.rampup_epochs = rampup_epochs
        self.ce_weight = ce_weight
        self.ekd_weight = ekd_weight if ekd else 0.0
        self.fkd_weight = fkd_weight if fkd else 0.0

    def auxiliary_modules(self):
        return [self.fusion] if self.fusion is not None else []

    def forward(self, images):
        feats, logits = self.net(images)
        out = self.named_subnets(logits)
        out["fused"] = self.fusion(feats) if self.fusion is not None else out["ensemble"]
        return out

    def loss(self, outputs, targets, epoch):
        n = self.num_subnets
        subs = [outputs[f"sub{i}"] for i in range(n)]
        terms = {f"ce_sub{i}": self.ce_weight * cross_entropy(z, targets) for i, z in enumerate(subs)}
        terms["ce_fused"] = self.ce_weight * cross_entropy(outputs["fused"], targets)
        ramp = sigmoid_rampup(epoch, self.rampup_epochs)
        if self.ekd_weight:
            terms["ekd"] = ramp * self.ekd_weight * kd_loss(outputs["fused"], outputs["ensemble"], self.temperature)
        if self.fkd_weight:
            for i, z in enumerate(subs):
                terms[f"fkd_sub{i}"] = ramp * self.fkd_weight * kd_loss(z, outputs["fused"], self.temperature)
        return terms

    def fused_features(self, images) -> torch.Tensor:
        """The fused feature map, for using FFL's features in other tasks."""
        if self.fusion is None:
            raise ValueError("this model was trained without a fusion module")
        feats, _ = self.net(images)
        return self.fusion.fuse(feats)
