"""Deep Mutual Learning (Zhang, Xiang, Hospedales, Lu, CVPR 2018; code: YingZhangDUT/Deep-Mutual-Learning).

Independent peers (any architectures); each is trained with CE plus the mean over the other peers
of KL(peer || self) at temperature 1, the peer's prediction a constant. The original updates the
peers in turn: peer k's step sees the predictions of the peers already updated in this step, each
recomputed by a fresh forward pass (``update: alternating``, the default); ``joint`` updates all
peers in one step from one forward pass, as most re-implementations do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ffl.losses import cross_entropy, kd_loss, kd_weight
from ffl.methods.base import Method, frozen_bn_statistics
from ffl.methods.registry import register_method
from ffl.methods.settings import setting

CODE = "YingZhangDUT/Deep-Mutual-Learning train_models.py"


@dataclass(frozen=True, kw_only=True)
class DMLSettings:
    temperature: float = setting(
        1.0, "softmax temperature of the KL terms (T^2-scaled)", f"{CODE} kl_loss_compute: plain softmax", gt=0
    )
    rampup_epochs: float = setting(0.0, "sigmoid ramp-up of the KL weight, in epochs; 0 = none", f"{CODE}: none", ge=0)
    ce_weight: float = setting(1.0, "weight of each peer's cross-entropy", f"{CODE}: unweighted", ge=0)
    kd_weight: float = setting(1.0, "weight of each peer's KL term", f"{CODE}: unweighted", ge=0)
    update: Literal["alternating", "joint"] = setting(
        "alternating",
        "alternating: peers updated in turn, each after a fresh forward pass; joint: one step",
        f"{CODE} lines 310-316",
    )


@register_method
class DML(Method):
    name = "dml"
    Settings = DMLSettings
    reference = (
        "Zhang et al., Deep Mutual Learning, CVPR 2018; code YingZhangDUT/Deep-Mutual-Learning "
        "(TensorFlow, Market-1501 only)"
    )
    differences = (
        "Alternating update: every peer's turn uses the same mini-batch; the TensorFlow code dequeues a new "
        "batch at each session run, so each peer there sees its own batch (a side effect of TF1 queues that the "
        "paper's Algorithm 1 does not describe).",
        "With more than two peers the KL terms are averaged (1/(K-1), the paper's multi-peer loss); the code "
        "sums them. Identical for two peers.",
        "The official code has no CIFAR recipe: optimiser and schedule are the shared train section "
        "(the paper: SGD with Nesterov, lr 0.1, batch 64, x0.1 every 60 epochs, 200 epochs).",
    )
    subnets = (2, None)
    default_subnets = 2
    sharing = "independent"
    stackable = True

    flat_settings = ("temperature", "rampup_epochs", "ce_weight", "kd_weight")

    @classmethod
    def settings_from_flat_spec(cls, spec: dict) -> dict:
        return super().settings_from_flat_spec(spec) | {"update": "joint"}  # what the old DML did

    @classmethod
    def has_own_step(cls, settings) -> bool:
        return settings.update == "alternating"

    def forward(self, images):
        return self.named_subnets(self.net(images)[1])

    def _peer_loss(self, i: int, student, peers: list, targets, epoch) -> dict:
        s = self.settings
        kd = sum(kd_loss(student, t, s.temperature) for t in peers) / len(peers)
        return {
            f"ce_sub{i}": s.ce_weight * cross_entropy(student, targets),
            f"kd_sub{i}": kd_weight(s, epoch, s.kd_weight) * kd,
        }

    def loss(self, outputs, targets, epoch):
        subs = self.sub_outputs(outputs)
        terms = {}
        for i, z in enumerate(subs):
            terms |= self._peer_loss(i, z, [t for j, t in enumerate(subs) if j != i], targets, epoch)
        return dict(sorted(terms.items(), key=lambda kv: kv[0].startswith("kd")))

    def train_step(self, images, targets, epoch, ctx):
        with ctx.autocast():
            logits = self.net(images)[1]
        current = list(logits)
        terms = {}
        for i in range(self.num_subnets):
            if i > 0:
                # The previous peer has just been updated: its prediction is recomputed, with batch
                # statistics as in its own pass, without counting the batch twice in its running statistics.
                with torch.no_grad(), ctx.autocast(), frozen_bn_statistics(self.net.branches[i - 1]):
                    current[i - 1] = self.net.forward_one(i - 1, images)
            peer_terms = self._peer_loss(i, logits[i], [z for j, z in enumerate(current) if j != i], targets, epoch)
            ctx.update(sum(peer_terms.values()))
            terms |= peer_terms
        outputs = self.named_subnets([z.detach() for z in logits])
        return outputs, dict(sorted(terms.items(), key=lambda kv: kv[0].startswith("kd")))
