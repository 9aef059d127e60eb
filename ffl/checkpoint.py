"""Checkpoints that survive a kill mid-write and cannot run code when loaded."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch


class CheckpointError(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _beside(path: Path, kind: str) -> Path:
    """``.<name>.<kind>-<pid>`` beside ``path``, for this process. Those a killed process left
    (its pid no longer runs) are removed here, the next time the same path is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.{kind}-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def atomic_save(obj: Any, path: str | Path) -> None:
    """Writes to a temporary file beside ``path``, syncs it, then renames: a kill leaves the old file whole."""
    path = Path(path)
    tmp = _beside(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """``atomic_save`` for other files (metrics, tables, pictures): readers see the old or the new file."""
    path = Path(path)
    tmp = _beside(path, "tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def replace_directory(new: str | Path, old: str | Path) -> None:
    """Puts directory ``new`` where ``old`` is: the old one is renamed aside first and removed only
    once the new one is in place, so a kill leaves one whole directory or the other (and, at
    worst, the old one under ``.<name>.old-<pid>`` beside it), never a mixture."""
    new, old = Path(new), Path(old)
    aside = _beside(old, "old")
    if old.exists() or old.is_symlink():
        os.replace(old, aside)
    os.replace(new, old)
    if aside.is_symlink():  # the link itself was set aside, not what it points to
        aside.unlink()
    else:
        shutil.rmtree(aside, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    """The reason in one line; a heading that ends in ':' (torch's state-dict errors) with its first item."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    if not lines:
        return type(e).__name__
    return f"{lines[0]} {lines[1][:200]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]


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
        reason = _first_line(e)
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
        raise CheckpointError(f"{path}: does not fit this version of ffl: {_first_line(e)}") from None


def config_difference(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(saved) | set(current))
    diff = []
    for k in keys:
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diff += config_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            diff.append(f"{prefix}{k}")
    return diff
