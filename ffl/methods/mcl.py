"""Mutual Contrastive Learning (Yang, An, Xu, Liu, Xu, AAAI 2022; code: winycg/MCL, followed where
the paper leaves details out).

Two or more networks trained together, each with its own cross-entropy, plus contrastive terms
between their embeddings: each network's pooled feature goes through its own projection head
(Linear, ReLU, Linear, L2-normalised; ``ffl.contrastive.Embed``), and the terms compare the batch's
embeddings within a network (vanilla contrastive learning, VCL) and across networks (interactive
contrastive learning, ICL), each also in a soft form (KL between the networks' similarity
distributions at temperature T). Every term is a sum over networks and pairs, as in the code. The
heads are dropped at deployment: one network is what MCL ships.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffl.contrastive import Embed, mutual_terms
from ffl.losses import ce_terms, kd_loss
from ffl.methods.base import Method
from ffl.methods.registry import register_method
from ffl.methods.settings import setting

CODE = "winycg/MCL"
SCRIPT = f"{CODE} scripts/train_cifar_mcl.sh"


@dataclass(frozen=True, kw_only=True)
class MCLSettings:
    vcl_weight: float = setting(0.1, "weight of the vanilla contrastive term (alpha)", f"{SCRIPT} --alpha 0.1", ge=0)
    soft_vcl_weight: float = setting(
        1.0, "weight of the soft vanilla contrastive term (gamma)", f"{SCRIPT} --gamma 1.", ge=0
    )
    icl_weight: float = setting(0.1, "weight of the interactive contrastive term (beta)", f"{SCRIPT} --beta 0.1", ge=0)
    soft_icl_weight: float = setting(
        1.0, "weight of the soft interactive contrastive term (lambda)", f"{SCRIPT} --lam 1.", ge=0
    )
    contrast_temperature: float = setting(
        0.1, "temperature of the embeddings' similarities (tau)", f"{CODE} main_cifar.py --tau 0.1", gt=0
    )
    temperature: float = setting(
        3.0, "temperature of the soft terms and the logit KD (T^2-scaled)", f"{CODE} main_cifar.py --kd_T 3", gt=0
    )
    embed_dim: int = setting(128, "width of each projection head", f"{CODE} main_cifar.py --feat-dim 128", ge=1)
    ce_weight: float = setting(1.0, "weight of every cross-entropy term", f"{CODE} main_cifar.py: unweighted sum", ge=0)
    logit_kd: bool = setting(
        False,
        "also distil logits from the networks' mean (MCL + logit KD): with two networks both learn from it, "
        "with more only the last one, as in the code",
        f"{CODE} scripts/train_cifar_mcl_logit.sh --logit-distill (off in train_cifar_mcl.sh)",
    )


@register_method
class MCL(Method):
    name = "mcl"
    Settings = MCLSettings
    reference = "Yang et al., Mutual Contrastive Learning for Visual Representation Learning, AAAI 2022; code " + CODE
    differences = (
        "The code's CIFAR loader draws 2 images of each of 64 classes per batch of 128 (MPerClassSampler, 390 "
        "batches per epoch drawn with replacement), so every anchor has exactly one positive; here batches are "
        "the project's shuffle, an anchor has every other sample of its class as positives, and an anchor with "
        "none is left out of the mean (the code would divide by zero).",
        "With more than two networks the code branches them over a shared stem and first stage; here "
        "model.shared (auto: independent networks for two, shared low-level layers for more) shares what ONE "
        "and FFL share.",
        "The code reports the best test accuracy over epochs of the best network; this project reports the last "
        "epoch's, of network 1 (sub0) as deployed, and the mean over networks.",
        "The code's schedule is cosine over 300 epochs with weight decay 5e-4; the shared train section sets both "
        "here (configs/tables.yaml's cifar100-mcl holds the authors' recipe).",
        "The embeddings, the heads and the contrastive terms are computed in fp32 under bf16/fp16 autocast: "
        "similarities divided by tau = 0.1 are too coarse in bf16.",
    )
    subnets = (2, None)
    default_subnets = 2
    sharing = "either"
    sharing_doc = "independent networks for two (the code's), branches over shared low-level layers for more"
    not_stackable = (
        "adds a projection head over each network's pooled feature, which ffl/stacked.py does not lay side by "
        "side, and its contrastive terms would need each run's batch on its own"
    )

    @classmethod
    def resolve_shared(cls, archs, shared):
        if shared is None:  # the code: independent networks for two, branches for more
            return len(archs) > 2 and len(set(archs)) == 1
        return super().resolve_shared(archs, shared)

    @classmethod
    def deployed(cls, n, settings):
        return "sub0"

    def __init__(self, archs, num_classes, shared=None, settings=None, **kwargs):
        super().__init__(archs, num_classes, shared, settings, **kwargs)
        self.embeds = nn.ModuleList(Embed(c, self.settings.embed_dim) for c in self.net.out_channels)

    def embeddings(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each network's L2-normalised embedding of its pooled feature map, in fp32."""
        with torch.autocast(feats[0].device.type, enabled=False):
            return [embed(f.float().mean((2, 3))) for embed, f in zip(self.embeds, feats, strict=True)]

    def forward(self, images):
        feats, logits = self.net(images)
        out = self.named_subnets(logits)
        if self.training:
            out |= {f"_embed{i}": z for i, z in enumerate(self.embeddings(feats))}
        return out

    def loss(self, outputs, targets, epoch):
        s = self.settings
        n = self.num_subnets
        subs = self.sub_outputs(outputs)
        terms = ce_terms(subs, targets, s.ce_weight)
        if s.logit_kd:
            students = range(n) if n == 2 else [n - 1]
            for i in students:  # the code's teacher: the networks' mean logits, detached
                terms[f"kd_sub{i}"] = kd_loss(subs[i], outputs["ensemble"], s.temperature)
        embeddings = [outputs[f"_embed{i}"] for i in range(n)]
        mutual = mutual_terms(embeddings, targets, s.contrast_temperature, s.temperature)
        return terms | {name: getattr(s, f"{name}_weight") * value for name, value in mutual.items()}
