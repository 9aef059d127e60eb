"""Top-k error of every named classifier, accumulated on the device and read once."""

from __future__ import annotations

import torch

from ffl import distributed
from ffl.precision import autocast


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top == targets[:, None]
    return [hits[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


def _batches(method, loader, precision: str, progress):
    """``(outputs, targets)`` per batch, in eval mode (the method's mode is restored afterwards)."""
    was_training = method.training
    method.eval()
    try:
        for x, y in progress(loader) if progress else loader:
            with autocast(loader.device, precision):
                outputs = method(x)
            yield outputs, y
    finally:
        method.train(was_training)


def _across_ranks(correct: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], int]:
    """Every rank's hits and sample count added up (each evaluated its part of every batch; a rank
    whose parts were all empty has no classifiers to name, hence objects rather than a tensor)."""
    parts = [None] * distributed.current().world
    torch.distributed.all_gather_object(parts, ({k: v.tolist() for k, v in correct.items()}, n))
    total: dict[str, torch.Tensor] = {}
    for hits, _ in parts:
        for name, c in hits.items():
            total[name] = total.get(name, torch.zeros(2, dtype=torch.long)) + torch.tensor(c)
    return total, sum(count for _, count in parts)


@torch.no_grad()
def evaluate(method, loader, precision: str = "fp32", progress=None) -> dict[str, dict[str, float]]:
    """``{output: {"top1_err": %, "top5_err": %}}`` for every classifier the method returns.

    ``progress``: an optional wrapper over the batches (a progress bar), called as ``progress(loader)``.
    """
    return evaluate_and_predict(method, loader, (), precision, progress)[0]


@torch.no_grad()
def evaluate_and_predict(
    method, loader, prefer: tuple[str, ...], precision: str = "fp32", progress=None
) -> tuple[dict[str, dict[str, float]], dict | None]:
    """``evaluate``'s errors, and from the same pass the predictions of the first classifier in
    ``prefer`` that the method returns: ``{"classifier", "targets", "predicted"}`` (None if none)."""
    correct: dict[str, torch.Tensor] = {}
    n = 0
    kept, targets, predicted = None, [], []
    for outputs, y in _batches(method, loader, precision, progress):
        for name, logits in outputs.items():
            if name[0] == "_":  # a loss's intermediate, not a classifier (ffl.methods.base)
                continue
            c = torch.stack(topk_correct(logits.float(), y))
            correct[name] = correct[name] + c if name in correct else c
        kept = kept or next((name for name in prefer if name in outputs), None)
        if kept is not None:
            targets.append(y)
            predicted.append(outputs[kept].argmax(dim=1))
        n += len(y)
    if distributed.current().distributed:
        if prefer:
            raise ValueError("predictions are collected in one process only")
        correct, n = _across_ranks(correct, n)
    result = {}
    for name, c in correct.items():
        top1, top5 = c.tolist()
        result[name] = {"top1_err": 100.0 * (1 - top1 / n), "top5_err": 100.0 * (1 - top5 / n)}
    if kept is None:
        return result, None
    return result, {
        "classifier": kept,
        "targets": torch.cat(targets).tolist(),
        "predicted": torch.cat(predicted).tolist(),
    }
