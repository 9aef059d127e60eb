"""Top-k error of every named classifier, accumulated on the device and read once."""

from __future__ import annotations

import torch

from ffl.precision import autocast


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == targets[:, None]
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(method, loader, precision: str = "fp32", progress=None) -> dict[str, dict[str, float]]:
    """``{output: {"top1_err": %, "top5_err": %}}`` for every classifier the method returns.

    ``progress``: an optional wrapper over the batches (a progress bar), called as ``progress(loader)``.
    """
    was_training = method.training
    method.eval()
    correct: dict[str, torch.Tensor] = {}
    n = 0
    device = loader.device
    for x, y in progress(loader) if progress else loader:
        with autocast(device, precision):
            outputs = method(x)
        for name, logits in outputs.items():
            c = torch.stack(topk_correct(logits.float(), y))
            correct[name] = correct[name] + c if name in correct else c
        n += len(y)
    method.train(was_training)
    result = {}
    for name, c in correct.items():
        top1, top5 = c.tolist()
        result[name] = {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - top5 / n)}
    return result
