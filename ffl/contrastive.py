"""Mutual contrastive terms (Yang et al.: MCL, AAAI 2022; L-MCL, TPAMI 2023), as in winycg/MCL
``losses/cifar_sup_mcl_loss.py`` and winycg/L-MCL ``losses/cifar_sup_layer_mcl_meta_loss.py``.

Every term is a function of one batch: L2-normalised embeddings, their labels and, for L-MCL, a
weight per anchor. The contrast is supervised and in-batch: an anchor's positives are the other
samples of its class, its denominator every other sample (the anchor itself left out). The soft
terms are KL divergences between two similarity matrices' rows at temperature T (T^2-scaled),
the target detached and every column kept, the diagonal included, as in the code.

One difference, where the code would divide by zero: the authors' loader draws two images of each
of 64 classes per batch, so every anchor has one positive. With any other batch an anchor may have
none; it is left out of the mean instead of making the loss NaN (with a positive for every
anchor, the two are the same).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Embed(nn.Module):
    """The projection head of a feature vector: Linear(d, e), ReLU, Linear(e, e), then L2-normalised
    (the code's ``Embed``; its heads are trained with the networks and dropped at deployment)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.proj_head = nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(inplace=True), nn.Linear(dim_out, dim_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj_head(x), dim=1)


def masks(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives, others), B x B: [a, b] is 1 where b is of a's class and b != a; where b != a."""
    eye = torch.eye(len(targets), device=targets.device)
    same = (targets[:, None] == targets[None, :]).float()
    return same - eye, 1.0 - eye


def contrastive(logits: torch.Tensor, positives: torch.Tensor, others: torch.Tensor, weight=None) -> torch.Tensor:
    """The code's supervised contrast of a similarity matrix (rows: anchors): the mean over anchors
    of minus the mean log-probability of the anchor's positives among its ``others``; ``weight``
    (B, 1) scales each anchor's term (L-MCL), and the mean stays over anchors."""
    denominator = torch.logsumexp(logits.masked_fill(others == 0, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - denominator
    count = positives.sum(1)
    per_anchor = (positives * log_prob * (1.0 if weight is None else weight)).sum(1) / count.clamp(min=1)
    has = (count > 0).float()
    return -(per_anchor * has).sum() / has.sum().clamp(min=1)


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, weight=None) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) * T^2 per row, teacher detached; summed over rows
    with ``weight`` (B, 1) and divided by B (the code's batch mean)."""
    t = temperature
    log_p_s = F.log_softmax(student / t, dim=1)
    log_p_t = F.log_softmax(teacher.detach() / t, dim=1)
    rows = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1, keepdim=True)
    return (t * t) * (rows * (1.0 if weight is None else weight)).sum() / len(student)


def pair_terms(a: torch.Tensor, b: torch.Tensor, positives, others, tau: float, temperature: float, weight=None):
    """L-MCL's four terms for one pair of embeddings (``SupMCL.forward`` of L-MCL): vcl, soft_vcl,
    icl and soft_icl, each the sum of its two directions."""
    ab, ba = a @ b.T / tau, b @ a.T / tau
    aa, bb = a @ a.T / tau, b @ b.T / tau
    return {
        "vcl": contrastive(aa, positives, others, weight) + contrastive(bb, positives, others, weight),
        "soft_vcl": soft_kl(aa, bb, temperature, weight) + soft_kl(bb, aa, temperature, weight),
        "icl": contrastive(ab, positives, others, weight) + contrastive(ba, positives, others, weight),
        "soft_icl": soft_kl(ab, ba, temperature, weight) + soft_kl(ba, ab, temperature, weight),
    }


def mutual_terms(embeddings: list[torch.Tensor], targets: torch.Tensor, tau: float, temperature: float):
    """MCL's four terms over n networks' embeddings (``SupMCL.forward`` of MCL), each a sum: vcl over
    the networks, soft_vcl over ordered pairs, icl and soft_icl over pairs in both directions."""
    positives, others = masks(targets)
    within = [z @ z.T / tau for z in embeddings]
    n = len(embeddings)
    terms = {
        "vcl": sum(contrastive(s, positives, others) for s in within),
        "soft_vcl": sum(soft_kl(within[i], within[j], temperature) for i in range(n) for j in range(n) if i != j),
        "icl": 0.0,
        "soft_icl": 0.0,
    }
    for i in range(n):
        for j in range(i + 1, n):
            ij, ji = embeddings[i] @ embeddings[j].T / tau, embeddings[j] @ embeddings[i].T / tau
            terms["icl"] = terms["icl"] + contrastive(ij, positives, others) + contrastive(ji, positives, others)
            terms["soft_icl"] = terms["soft_icl"] + soft_kl(ij, ji, temperature) + soft_kl(ji, ij, temperature)
    return terms
