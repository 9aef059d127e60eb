"""What every command checks about the machine it runs on before any work: the device it asked
for, and that its outputs can be written."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from ffl.errors import one_line
from pipeline.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is available")
    if device.type != "cpu":
        try:  # an index past the last GPU, a backend this torch was built without
            torch.empty(1, device=device)
        except (RuntimeError, AssertionError) as e:
            raise UserError(f"train.device: {name} is not usable here ({one_line(e)})") from None
    return device


def ensure_writable(*dirs: Path, files: tuple[Path, ...] = ()) -> None:
    """Output directories exist and can be written, and output files are not something else (a
    directory): checked before any work, so a run never ends failing to save what it computed."""
    for d in (*dirs, *(f.parent for f in files)):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{d}: cannot create output directory ({e.strerror})") from None
        if not os.access(d, os.W_OK):
            raise UserError(f"{d}: output directory is not writable")
    for f in files:
        if f.exists() and not f.is_file():
            raise UserError(f"{f}: is a directory or another non-file; move it away")


def check_writable(*dirs: Path) -> None:
    """Output directories that exist and can be written, or can be made: checked without making
    them (a command that may still be refused leaves nothing behind)."""
    for d in dirs:
        existing = next(p for p in (d, *d.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise UserError(f"{d}: cannot create output directory ({existing} is not a folder)")
        if not os.access(existing, os.W_OK):
            raise UserError(
                f"{d}: output directory is not writable"
                if existing == d
                else f"{d}: cannot create output directory ({existing} is not writable)"
            )


@contextlib.contextmanager
def working_directory(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
