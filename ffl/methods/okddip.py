"""Online Knowledge Distillation with Diverse Peers (Chen, Mei, Wang, Feng, Chen, AAAI 2020; code:
DefangChen/OKDDip, followed where the paper leaves details out).

Branches over shared low-level layers: the first n-1 are auxiliary peers, the last is the group
leader (the deployed network). Each peer i is distilled towards its own peer-ensemble teacher,
an attention-weighted sum of the peers' logits: the weights come from query and key projections
(no bias, C -> C/factor) of the peers' pooled features, a softmax over the peers of their dot
products, the peer itself included. The leader is distilled towards the mean of the peers' logits.
CE on every branch; both KL levels weighted by the sigmoid ramp-up. As in the code nothing is
detached: the query and key projections learn only through the distillation targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffl.errors import SettingError
from ffl.losses import ce_terms, kd_loss, kd_weight
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting
from ffl.models.registry import backbone_spec

CODE = "DefangChen/OKDDip"


@dataclass(frozen=True, kw_only=True)
class OKDDipSettings:
    temperature: float = setting(3.0, "KD temperature (terms scaled by T^2)", f"{CODE} train_GL.py --temperature", gt=0)
    rampup_epochs: float = setting(
        80.0, "sigmoid ramp-up of the KD weight, in epochs (of 300); 0 = none", f"{CODE} train_GL.py --length 80", ge=0
    )
    ce_weight: float = setting(1.0, "weight of every cross-entropy term", f"{CODE} train_GL.py: unweighted sum", ge=0)
    kd_weight: float = setting(1.0, "weight of both KL levels (alpha)", f"{CODE} train_GL.py --alpha 1.0", ge=0)
    attention_factor: int = setting(
        8, "query/key projection: channels / factor", f"{CODE} models/model_cifar/resnet_GL.py factor=8", ge=1
    )


class PeerAttention(nn.Module):
    """``weights[b, i, j]``: how much peer j's logits count in peer i's teacher for sample b."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        width = channels // factor
        self.query = nn.Linear(channels, width, bias=False)
        self.key = nn.Linear(channels, width, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:  # (B, peers, C) -> (B, peers, peers)
        energy = torch.bmm(self.query(pooled), self.key(pooled).transpose(1, 2))
        return torch.softmax(energy, dim=-1)


@register_method
class OKDDip(Method):
    name = "okddip"
    Settings = OKDDipSettings
    reference = "Chen et al., Online Knowledge Distillation with Diverse Peers, AAAI 2020; code " + CODE
    differences = (
        "The official ResNet-110 is Bottleneck [12, 12, 12] (256-channel features); this project's resnet110 is "
        "BasicBlock at every depth, as in FFL's code.",
        "The code steps its lr scheduler at the start of each epoch (PyTorch 1.0): the drops come one epoch "
        "earlier (149 and 224) than train.milestones' 150 and 225.",
        "The code adds 1e-7 to the teacher's probabilities inside the KL; omitted here (a 1e-7 shift).",
        "The code reports the leader's best test accuracy over all epochs; this project reports the last epoch's.",
    )
    subnets = (3, None)  # at least two peers and the leader
    default_subnets = 4
    sharing = "shared"

    @classmethod
    def outputs(cls, n, settings):
        # sub0..sub{n-2}: the peers; sub{n-1} is the leader (also "leader"); "ensemble": the peers' mean.
        return [f"sub{i}" for i in range(n)] + ["leader", "ensemble"]

    @classmethod
    def deployed(cls, n, settings):
        return "leader"

    @classmethod
    def check_settings(cls, archs, settings):
        channels = backbone_spec(archs[0]).out_channels
        if settings.attention_factor > channels:
            raise SettingError(
                "attention_factor", f"{settings.attention_factor} is more than {archs[0]}'s {channels} feature channels"
            )

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        self.attention = PeerAttention(self.net.out_channels[0], self.settings.attention_factor)

    def auxiliary_modules(self):
        return [self.attention]

    def standalone(self, classifier):
        return super().standalone(f"sub{self.num_subnets - 1}" if classifier == "leader" else classifier)

    def forward(self, images):
        feats, logits = self.net(images)
        peers = torch.stack(logits[:-1], dim=1)  # (B, peers, classes)
        out = {f"sub{i}": z for i, z in enumerate(logits)}
        out["leader"] = logits[-1]
        out["ensemble"] = peers.mean(1)
        if self.training:
            pooled = torch.stack([f.float().mean((2, 3)) for f in feats[:-1]], dim=1)  # (B, peers, C)
            weights = self.attention(pooled)
            out["_peer_teachers"] = torch.bmm(weights, peers.float())  # row i: peer i's teacher
        return out

    def loss(self, outputs, targets, epoch):
        s = self.settings
        n = self.num_subnets
        terms = ce_terms(self.sub_outputs(outputs), targets, s.ce_weight)
        weight = kd_weight(s, epoch, s.kd_weight)
        teachers = outputs["_peer_teachers"]
        for i in range(n - 1):
            terms[f"kd_sub{i}"] = weight * kd_loss(outputs[f"sub{i}"], teachers[:, i], s.temperature, teacher_grad=True)
        terms["kd_leader"] = weight * kd_loss(outputs["leader"], outputs["ensemble"], s.temperature, teacher_grad=True)
        return terms
