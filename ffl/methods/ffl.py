"""Feature Fusion Learning (Kim, Hyun, Chung, Kwak, ICPR 2020; code: Jangho-Kim/FFL-pytorch).

Sub-networks (branches over shared low-level layers, or independent networks of any
architectures) and a fusion module over their last feature maps. Losses: CE on every classifier;
EKD: the sub-networks' mean logits teach the fused classifier; FKD: the fused classifier teaches
every sub-network. KD terms use temperature T, T^2 scaling, detached teachers and the sigmoid
ramp-up. ``fusion.enabled=False`` is the poster's "no FM" ablation: the fused output is the plain
ensemble, and EKD (ensemble -> itself) has nothing to teach, so it must be off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ffl.errors import SettingError
from ffl.fusion import FusionModule
from ffl.losses import ce_terms, cross_entropy, kd_loss, kd_weight
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting

CODE = "Jangho-Kim/FFL-pytorch"


@dataclass(frozen=True, kw_only=True)
class KDTerm:
    enabled: bool = setting(True, "the term is trained (the poster's ablation columns)", "poster, ablation table")
    weight: float = setting(1.0, "its weight", f"{CODE} train_FFL.py (unweighted sum)", ge=0)


@dataclass(frozen=True, kw_only=True)
class FusionSettings:
    enabled: bool = setting(True, "false: the poster's no-FM ablation (fused = plain ensemble)", "poster, ablation")
    width: int | None = setting(
        None, "point-wise conv channels; null = channels of one sub-network's map", f"{CODE} our_network.py", ge=1
    )
    kernel_size: int = setting(3, "depth-wise conv kernel", f"{CODE} our_network.py", ge=1, odd=True)
    weight_decay: float = setting(
        1e-5, "the fusion module's own optimiser's weight decay", f"{CODE} train_FFL.py", ge=0
    )


@dataclass(frozen=True, kw_only=True)
class FFLSettings:
    temperature: float = setting(3.0, "KD temperature (terms scaled by T^2)", f"{CODE} utils.py KLLoss", gt=0)
    rampup_epochs: float = setting(
        80.0, "sigmoid ramp-up of the KD weight, in epochs (of 300); 0 = none", f"{CODE} utils.py sigmoid_rampup", ge=0
    )
    ce_weight: float = setting(1.0, "weight of every cross-entropy term", f"{CODE} train_FFL.py", ge=0)
    ekd: KDTerm = setting(default_factory=KDTerm, doc="ensemble -> fused classifier")
    fkd: KDTerm = setting(default_factory=KDTerm, doc="fused classifier -> every sub-network")
    fusion: FusionSettings = setting(default_factory=FusionSettings, doc="the fusion module")


@register_method
class FFL(Method):
    name = "ffl"
    Settings = FFLSettings
    reference = (
        "Kim et al., Feature Fusion for Online Mutual Knowledge Distillation, ICPR 2020 (arXiv 1904.09058); code "
        + CODE
    )
    differences = (
        "Any number of sub-networks and different architectures can be fused (the paper claims it; the "
        "official code hard-codes two equal branches).",
        "Classifier heads run in fp32 under bf16 autocast (the logits are soft KD targets).",
    )
    subnets = (2, None)
    default_subnets = 2
    sharing = "either"
    stackable = True

    flat_settings = ("temperature", "rampup_epochs", "ce_weight")

    @classmethod
    def settings_from_flat_spec(cls, spec: dict) -> dict:
        f = {k: spec.pop(k) for k in ("fusion", "fusion_width", "fusion_kernel_size") if k in spec}
        s = super().settings_from_flat_spec(spec)
        for term in ("ekd", "fkd"):
            if term in spec or f"{term}_weight" in spec:
                s[term] = {"enabled": spec.pop(term, True), "weight": spec.pop(f"{term}_weight", 1.0)}
        if f:
            s["fusion"] = {"enabled": f.get("fusion", True), "width": f.get("fusion_width")}
            s["fusion"]["kernel_size"] = f.get("fusion_kernel_size", 3)
        return s

    @classmethod
    def check_settings(cls, archs, settings):
        if settings.ekd.enabled and not settings.fusion.enabled:
            raise SettingError("ekd.enabled", "EKD distils into the fusion module: it needs fusion.enabled")
        if settings.fusion.enabled:
            cls.require_fusable(archs)

    @classmethod
    def outputs(cls, n, settings):
        return [*super().outputs(n, settings), "fused"]

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        s = self.settings
        f = s.fusion
        self.fusion = FusionModule(self.net.out_channels, num_classes, f.width, f.kernel_size) if f.enabled else None
        self.ekd_weight = s.ekd.weight if s.ekd.enabled else 0.0
        self.fkd_weight = s.fkd.weight if s.fkd.enabled else 0.0

    def auxiliary_modules(self):
        return [self.fusion] if self.fusion is not None else []

    def aux_weight_decay(self):
        return self.settings.fusion.weight_decay

    def forward(self, images):
        feats, logits = self.net(images)
        out = self.named_subnets(logits)
        out["fused"] = self.fusion(feats) if self.fusion is not None else out["ensemble"]
        return out

    def loss(self, outputs, targets, epoch):
        s = self.settings
        subs = self.sub_outputs(outputs)
        terms = ce_terms(subs, targets, s.ce_weight)
        terms["ce_fused"] = s.ce_weight * cross_entropy(outputs["fused"], targets)
        if self.ekd_weight:
            ekd = kd_loss(outputs["fused"], outputs["ensemble"], s.temperature)
            terms["ekd"] = kd_weight(s, epoch, self.ekd_weight) * ekd
        if self.fkd_weight:
            for i, z in enumerate(subs):
                terms[f"fkd_sub{i}"] = kd_weight(s, epoch, self.fkd_weight) * kd_loss(
                    z, outputs["fused"], s.temperature
                )
        return terms

    def fused_features(self, images) -> torch.Tensor:
        """The fused feature map (N, fusion width, h, w), before the fused classifier's pooling: FFL's
        features for another task (a detection or segmentation head, retrieval after pooling)."""
        if self.fusion is None:
            raise ValueError("this model was trained without a fusion module")
        feats, _ = self.net(images)
        return self.fusion.fuse(feats)

    def classifier_features(self, images):
        out = super().classifier_features(images)
        if self.fusion is not None:
            feats = [out[f"sub{i}"][0] for i in range(self.num_subnets)]
            out["fused"] = (self.fusion.fuse(feats), self.fusion.classifier.fc)
        return out
