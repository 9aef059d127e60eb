"""Reading checkpoints and model files: one clear error for a truncated, foreign or code-carrying file
(writing them is ffl.atomic's)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType

import torch

from ffl.errors import one_line


class CheckpointError(RuntimeError):
    pass


def safe_load(path: str | Path, fields: Mapping[str, type | tuple[type, ...]] = MappingProxyType({})) -> dict:
    """``torch.load(weights_only=True)`` with one clear error for truncated, foreign or code-carrying
    files, and for files without one of ``fields`` (name -> expected type)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error below says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # truncated zip, pickle of arbitrary objects, not a torch file at all
        reason = one_line(e)
        if reason.startswith("Weights only load failed"):
            # Not torch's advice to retry with weights_only=False: that is what would run the code.
            reason = "it holds Python objects other than tensors and plain data, which could run code"
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated, corrupted or not ours): {reason}") from None
    missing = [k for k in fields if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise CheckpointError(f"{path}: not a checkpoint of this project (missing {', '.join(missing)})")
    for key, kind in fields.items():
        if not isinstance(obj[key], kind) or (kind is int and isinstance(obj[key], bool)):
            raise CheckpointError(f"{path}: not a checkpoint of this project ({key} is a {type(obj[key]).__name__})")
    return obj


@contextmanager
def reading(path: str | Path):
    """Wraps the use of a loaded file's contents (building a model from its spec, loading its
    state dicts): whatever they raise is the file's fault and becomes one CheckpointError."""
    try:
        yield
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: does not fit this version of ffl: {one_line(e)}") from None
