"""Files replaced whole: every output of the project (checkpoints, the model, prepared data,
metrics, reports, exports, search results) is written beside its final name, synced to the disk,
and renamed over it. A kill, a power loss or a full disk leaves the old file or the new one, never
a part of either. One rule for all writers, so that none of them forgets the sync."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ffl.errors import unwritten


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale(path: Path, pid: str) -> None:
    """Removes ``path`` if ``pid``, the process that made it, no longer runs (it was killed before
    it could remove it itself)."""
    if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def beside(path: Path, kind: str) -> Path:
    """``.<name>.<kind>-<pid>`` beside ``path``, for this process. Those a killed process left
    (its pid no longer runs) are removed here, the next time the same path is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.{kind}-*"):
        _remove_stale(stale, stale.name.rsplit("-", 1)[1])
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def clear_scratch(prefix: str) -> None:
    """Removes the scratch directories ``<prefix><pid>-*`` (``scratch``) of processes that no
    longer run, from the system's temporary folder."""
    for stale in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        _remove_stale(stale, stale.name[len(prefix) :].split("-", 1)[0])


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A directory of the system's temporary folder for this process's work, ``<prefix><pid>-*``,
    removed when the block ends, however it ends. A process killed in the block cannot remove its
    own: every later ``scratch`` of the same prefix removes those of processes gone (and
    ``clear_scratch`` does, for a caller that killed them)."""
    clear_scratch(prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def replacing(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new contents into: synced and renamed over ``path`` when
    the block ends, removed (``path`` untouched) when it raises."""
    path = Path(path)
    tmp = beside(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # named as the output, not as its temporary file (or not at all)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except RuntimeError as e:
        if not unwritten(e):
            raise
        # named as an OSError would name it: the output torch could not write
        raise OSError(errno.ENOSPC, "could not be written whole (disk full?)", str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_together(files: dict[str | Path, bytes]) -> None:
    """Several files that are one result: every one written whole and synced beside its name
    first, and only then all renamed, so a full disk leaves each of them as it was."""
    paths = [Path(p) for p in files]
    temps = [beside(p, "tmp") for p in paths]
    try:
        for tmp, path, data in zip(temps, paths, files.values(), strict=True):
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:  # named as the output, not as its temporary file
                raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def torch_save(obj: Any, path: str | Path) -> None:
    import torch  # imported here: this module serves writers that never touch torch

    with replacing(path) as f:
        torch.save(obj, f)


def replace_directory(new: str | Path, old: str | Path) -> None:
    """Puts directory ``new`` where ``old`` is: the old one is renamed aside first and removed only
    once the new one is in place, so a kill leaves one whole directory or the other (and, at
    worst, the old one under ``.<name>.old-<pid>`` beside it), never a mixture. The new one's
    files are synced first: the rename must not publish files still in the page cache."""
    new, old = Path(new), Path(old)
    for f in new.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
    aside = beside(old, "old")
    if old.exists() or old.is_symlink():
        os.replace(old, aside)
    os.replace(new, old)
    if aside.is_symlink():  # the link itself was set aside, not what it points to
        aside.unlink()
    else:
        shutil.rmtree(aside, ignore_errors=True)
