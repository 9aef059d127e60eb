"""DualNet (Hou, Liu, Wang, ICCV 2017; the authors' Caffe code: ustc-vim/dualnet).

Two parallel networks whose last feature maps are averaged (Caffe Eltwise SUM, coefficients 0.5)
into a fused classifier; each network keeps an auxiliary classifier weighted 0.3 against the fused
one's 1 ("the complementary constraint is imposed by weighting the three classifiers"). Iterative
training: steps alternate which network is updated (its auxiliary CE plus the fused CE; the other
network's features are detached). The last ``finetune_fraction`` of the epochs is the joint
fine-tuning: both networks and all three classifiers with the same weights (``finetune: joint``),
or the fused classifier alone (``fused_head``). Reported: every classifier, ``weighted`` (fused +
0.3 x each auxiliary, the authors' test-time score) and ``average`` (of the three classifiers'
logits, as the FFL poster reports DualNet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ffl.errors import SettingError
from ffl.losses import cross_entropy
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting
from ffl.models.registry import backbone_spec
from ffl.models.subnetworks import Classifier

CODE = "ustc-vim/dualnet"


@dataclass(frozen=True, kw_only=True)
class DualNetSettings:
    aux_weight: float = setting(
        0.3,
        "weight of each auxiliary classifier's CE (the fused one's is 1)",
        f"{CODE} res_e1_train_val.prototxt loss_weight 0.3",
        ge=0,
    )
    finetune_fraction: float = setting(
        0.1,
        "last part of the run spent on joint fine-tuning",
        "not in the paper's abstract or the code: a guess",
        ge=0,
        lt=1,
    )
    finetune: Literal["joint", "fused_head"] = setting(
        "joint",
        "what the fine-tuning trains: both networks and every classifier, or the fused classifier",
        "paper: 'joint finetuning'",
    )


@register_method
class DualNet(Method):
    name = "dualnet"
    Settings = DualNetSettings
    reference = "Hou et al., DualNet: Learn Complementary Features for Image Recognition, ICCV 2017; Caffe code " + CODE
    differences = (
        "The alternation unit: here every step updates the other network; the authors' code alternates whole "
        "training runs (train one net, freeze it, train the second with the fused and auxiliary losses), and "
        "only its first round is published.",
        "Both networks start from random weights; the authors' first network is a pretrained single net.",
        "The joint fine-tuning's length and what it trains are not in the published code; both are settings.",
        "The authors' heads are NIN blocks (1x1 conv, ReLU, pool); here each head is the backbone's pool + linear.",
    )
    subnets = (2, 2)
    default_subnets = 2
    sharing = "independent"
    partial_updates = True  # each iterative step updates one network
    stackable = True

    @classmethod
    def check_settings(cls, archs, settings):
        cls.require_fusable(archs)
        if len({backbone_spec(a).out_channels for a in archs}) > 1:
            raise SettingError("archs", "dualnet averages feature maps: their channel counts must match")

    @classmethod
    def outputs(cls, n, settings):
        return [*super().outputs(n, settings), "fused", "weighted", "average"]

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        self.fused_head = Classifier(self.net.out_channels[0], num_classes)
        self.turn = 0  # which network the next iterative step updates
        self.finetuning = False

    def auxiliary_modules(self):
        return [self.fused_head]

    def get_extra_state(self):
        return {"turn": self.turn}

    def set_extra_state(self, state):
        self.turn = int(state["turn"])

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.finetuning = epoch >= round(epochs * (1.0 - self.settings.finetune_fraction))

    def step_phase(self):
        # Three kinds of step, each the same device work every time: one captured graph each.
        return "finetune" if self.finetuning else self.turn

    def end_step(self) -> None:
        if not self.finetuning:
            self.turn = 1 - self.turn

    def forward(self, images):
        feats, logits = self.net(images)
        if self.training:
            if self.finetuning and self.settings.finetune == "fused_head":
                feats = [f.detach() for f in feats]
                logits = [z.detach() for z in logits]
            elif not self.finetuning:
                active = self.turn
                feats = [f if i == active else f.detach() for i, f in enumerate(feats)]
                logits = [z if i == active else z.detach() for i, z in enumerate(logits)]
        out = self.named_subnets(logits)
        out["fused"] = self.fused_head(0.5 * (feats[0] + feats[1]))
        w = self.settings.aux_weight
        out["weighted"] = out["fused"] + w * (out["sub0"] + out["sub1"])
        out["average"] = torch.stack([out["sub0"], out["sub1"], out["fused"]]).mean(0)
        return out

    def loss(self, outputs, targets, epoch):
        terms = {"ce_fused": cross_entropy(outputs["fused"], targets)}
        # The phase is decided on the host (set_epoch), not from ``epoch``: a device tensor would sync.
        for i in range(2):
            z = outputs[f"sub{i}"]
            if z.requires_grad:
                terms[f"ce_sub{i}"] = self.settings.aux_weight * cross_entropy(z, targets)
        return terms

    def classifier_features(self, images):
        out = super().classifier_features(images)
        out["fused"] = (0.5 * (out["sub0"][0] + out["sub1"][0]), self.fused_head.fc)
        return out
