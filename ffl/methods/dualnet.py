"""DualNet (Hou et al., ICCV 2017): two parallel networks whose last feature maps are summed.

Iterative training: steps alternate which sub-network is updated (its own CE plus the fused
classifier's CE; the other sub-network's features are detached so it receives no gradient), and
the last ``finetune_fraction`` of the epochs fine-tunes the fused classifier alone on both
(detached) feature maps. The reported output is the average of the three classifiers
("average"); the sub-networks, their ensemble and the fused classifier are reported too.
"""

from __future__ import annotations

import torch

from ffl.losses import cross_entropy
from ffl.methods.base import Method
from ffl.models.subnetworks import Classifier, check_fusable


class DualNet(Method):
    name = "dualnet"
    static_step = False  # the updated sub-network alternates in Python, step by step

    def __init__(
        self,
        archs: list[str],
        num_classes: int,
        shared: bool = False,
        ce_weight: float = 1.0,
        epochs: int = 300,
        finetune_fraction: float = 0.1,
    ):
        if len(archs) != 2:
            raise ValueError(f"DualNet fuses exactly 2 sub-networks, got {len(archs)}")
        if shared:
            raise ValueError("DualNet's two streams are independent networks")
        check_fusable(archs)
        super().__init__(
            archs, num_classes, shared, ce_weight=ce_weight, epochs=epochs, finetune_fraction=finetune_fraction
        )
        if len(set(self.net.out_channels)) != 1:
            raise ValueError(f"DualNet sums feature maps: channel counts must match, got {self.net.out_channels}")
        self.fused_head = Classifier(self.net.out_channels[0], num_classes)
        self.ce_weight = ce_weight
        self.finetune_start = round(epochs * (1.0 - finetune_fraction))
        self.turn = 0  # which sub-network the next training step updates
        self._epoch = 0

    def auxiliary_modules(self):
        return [self.fused_head]

    def get_extra_state(self):
        return {"turn": self.turn}

    def set_extra_state(self, state):
        self.turn = int(state["turn"])

    def set_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def forward(self, images):
        feats, logits = self.net(images)
        if self.training:
            if self._epoch >= self.finetune_start:
                feats = [f.detach() for f in feats]
            else:
                active = self.turn
                self.turn = 1 - self.turn
                feats = [f if i == active else f.detach() for i, f in enumerate(feats)]
                logits = [z if i == active else z.detach() for i, z in enumerate(logits)]
        out = self.named_subnets(logits)
        out["fused"] = self.fused_head(feats[0] + feats[1])
        out["average"] = torch.stack([out["sub0"], out["sub1"], out["fused"]]).mean(0)
        return out

    def loss(self, outputs, targets, epoch):
        terms = {"ce_fused": cross_entropy(outputs["fused"], targets)}
        # The phase is decided on the host (set_epoch), not from ``epoch``: a device tensor would sync.
        if self._epoch < self.finetune_start:
            for i in range(2):
                z = outputs[f"sub{i}"]
                if z.requires_grad:
                    terms[f"ce_sub{i}"] = self.ce_weight * cross_entropy(z, targets)
        return terms
