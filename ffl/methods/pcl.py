"""Peer Collaborative Learning for Online Knowledge Distillation (Wu and Gong, AAAI 2021).

Branches (peers) over shared low-level layers, each peer on its own randomly augmented view of
the batch (the shared layers run once per view). Two teachers:
- the peer ensemble teacher: one linear classifier over the peers' concatenated pooled features
  ("ensemble"), trained by CE, distilled into every peer;
- the peer mean teachers: a temporal mean (EMA) of the whole network (shared layers, branches,
  heads), updated after every optimiser step with the mean-teacher decay min(1 - 1/(step+1), 0.999);
  peer j learns from the mean teachers of the other peers, each on that peer's own view.
Loss: CE(ensemble) + sum_j [CE(peer j) + w KD(peer j <- ensemble) + w/(m-1) sum_{l != j} KD(peer j <- mean l)],
w the sigmoid ramp-up, T^2-scaled KD with detached teachers. The deployed model is the temporal
mean of peer 1 (the paper's Algorithm 1 output): ``mean0``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ffl.losses import ce_terms, cross_entropy, kd_loss, kd_weight
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting

PAPER = "Wu and Gong, AAAI 2021"
REPRO = "shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation (unofficial)"


@dataclass(frozen=True, kw_only=True)
class PCLSettings:
    temperature: float = setting(3.0, "KD temperature (terms scaled by T^2)", f"{REPRO} src/losses/kd_loss.py", gt=0)
    rampup_epochs: float = setting(
        80.0, "sigmoid ramp-up of the KD weights, in epochs (of 300); 0 = none", f"{PAPER}; ONE/OKDDip lineage", ge=0
    )
    ce_weight: float = setting(1.0, "weight of every cross-entropy term", f"{REPRO} configs: 1.0", ge=0)
    ensemble_weight: float = setting(1.0, "weight of each peer's KD from the ensemble teacher", f"{REPRO}: 1.0", ge=0)
    mean_weight: float = setting(1.0, "weight of each peer's KD from the mean teachers", f"{REPRO}: 1.0", ge=0)
    ema_decay: float = setting(
        0.999,
        "the temporal mean's decay (mean-teacher warm-up: min(1 - 1/(step+1), decay))",
        f"{REPRO} ema.py",
        gt=0,
        lt=1,
    )
    distinct_views: bool = setting(True, "each peer on its own augmented view (false: one view)", PAPER)


@register_method
class PCL(Method):
    name = "pcl"
    Settings = PCLSettings
    reference = f"{PAPER}, Peer Collaborative Learning for Online Knowledge Distillation (no official code; {REPRO})"
    differences = (
        "No official code: the loss weights, T, the EMA decay and the ramp-up follow the unofficial reproduction "
        "and the ONE/OKDDip code PCL builds on (its own 80-epoch ramp-up has a bug that makes the weight ~0 for "
        "epochs 2-80; the intended ramp-up is used here).",
        "PCL's ResNet-110 follows ONE/OKDDip (Bottleneck [12, 12, 12]); this project's resnet110 is BasicBlock.",
        "The peer ensemble teacher is one linear layer over the concatenated pooled features, as in the "
        "reproduction; the paper's wording ('an additional classifier') allows more.",
    )
    subnets = (2, None)
    default_subnets = 3
    sharing = "shared"

    @classmethod
    def outputs(cls, n, settings):
        return [f"sub{i}" for i in range(n)] + ["ensemble"] + [f"mean{i}" for i in range(n)]

    @classmethod
    def deployed(cls, n, settings):
        return "mean0"

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        self.classifier = nn.Linear(sum(self.net.out_channels), num_classes)
        # The temporal mean: moved by after_step, never by the optimiser; in the state dict, so
        # checkpoints and the model file carry it.
        self.mean_net = copy.deepcopy(self.net).requires_grad_(False)
        self.register_buffer("ema_steps", torch.zeros(()))

    def auxiliary_modules(self):
        return [self.classifier]

    def standalone(self, classifier):
        if classifier.startswith("mean"):
            return self.mean_net.subnetwork(int(classifier[4:]))
        return super().standalone(classifier)

    def forward(self, images):
        views = self.distinct_views(images)
        net = self.net
        if views is None:
            feats, logits = net(images)
            views = [images] * self.num_subnets
        else:
            feats = [branch(net.trunk(v)) for branch, v in zip(net.branches, views)]
            logits = [head(f) for head, f in zip(net.heads, feats)]
        out = {f"sub{i}": z for i, z in enumerate(logits)}
        pooled = torch.cat([f.float().mean((2, 3)) for f in feats], dim=1)
        with torch.autocast(pooled.device.type, enabled=False):
            out["ensemble"] = self.classifier(pooled)
        with torch.no_grad():
            mean = self.mean_net
            for i, v in enumerate(views):
                out[f"mean{i}"] = mean.forward_one(i, v)
        return out

    def loss(self, outputs, targets, epoch):
        s = self.settings
        n = self.num_subnets
        subs = self.sub_outputs(outputs)
        terms = {"ce_ensemble": s.ce_weight * cross_entropy(outputs["ensemble"], targets)}
        terms |= ce_terms(subs, targets, s.ce_weight)
        for j, z in enumerate(subs):
            ensemble = kd_loss(z, outputs["ensemble"], s.temperature)
            terms[f"kd_ensemble_sub{j}"] = kd_weight(s, epoch, s.ensemble_weight) * ensemble
            means = [kd_loss(z, outputs[f"mean{k}"], s.temperature) for k in range(n) if k != j]
            terms[f"kd_mean_sub{j}"] = kd_weight(s, epoch, s.mean_weight) * sum(means) / len(means)
        return terms

    @torch.no_grad()
    def after_step(self):
        self.ema_steps.add_(1)
        keep = torch.clamp(1 - 1 / self.ema_steps, max=self.settings.ema_decay)
        mean = list(self.mean_net.parameters())
        live = [p.detach() for p in self.net.parameters()]
        torch._foreach_mul_(mean, keep)
        torch._foreach_add_(mean, torch._foreach_mul(live, 1 - keep))

    def classifier_features(self, images):
        out = super().classifier_features(images)
        for i in range(self.num_subnets):
            m = self.mean_net
            out[f"mean{i}"] = (m.branches[i](m.trunk(images)), m.heads[i].fc)
        feats = [out[f"sub{i}"][0] for i in range(self.num_subnets)]
        out["ensemble"] = (torch.cat(feats, dim=1), self.classifier)
        return out
