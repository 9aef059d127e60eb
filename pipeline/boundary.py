"""Where a command's failures become what the user reads: one line on stderr, starting
``error:``, and the exit code that says what kind of failure it was (2 bad input, 1 a run that
failed or a machine out of resources, 130 an interrupt, 3 a DDP process whose peer went away)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer

from pipeline.errors import Interrupted, PeerStopped, TrainingFailed, UserError
from pipeline.signals import INTERRUPTED, INTERRUPTED_TRAINING, RANK_OF_LAUNCHER, terminate_is_interrupt


def workspace_state() -> str:
    """What a failed stage leaves behind when DVC ran it in this workspace, and the way back:
    `dvc exp run -S` has already written its values into params.yaml, and DVC removes a stage's
    outputs before running it. Empty outside DVC and in DVC's temporary copies (--temp, --queue)."""
    root = os.environ.get("DVC_ROOT")
    if not os.environ.get("DVC_STAGE") or not root or Path(root).resolve() != Path.cwd().resolve():
        return ""
    stage = os.environ["DVC_STAGE"]
    if os.environ.get("DVC_EXP_NAME"):
        return (
            f" [workspace: `dvc exp run` wrote its -S values into params.yaml and removed {stage}'s outputs;"
            f" `{RESTORE}` brings back the committed ones]"
        )
    return f" [workspace: DVC removed {stage}'s outputs before running it; `{RESTORE}` brings back the committed ones]"


# The way back from a failed stage in the workspace: the params and the outputs git keeps (curves,
# metrics, plots: cache false), then the ones in DVC's cache (data, models).
RESTORE = "git checkout -- params.yaml dvclive metrics plots && dvc checkout"


def say(message: str, code: int = 2) -> None:
    """A failure's one line on stderr."""
    # One line, whatever the user's values hold: a newline typed into a key or a path is shown as \n.
    message = message.replace("\r", "\\r").replace("\n", "\\n")
    if code == 130 and os.environ.get(RANK_OF_LAUNCHER):  # a Ctrl-C reaches every rank: `ffl train` says it once
        return
    typer.echo(f"error: {message}{workspace_state()}", err=True)


def fail(message: str, code: int = 2):
    say(message, code)
    raise typer.Exit(code)


def resource_exhausted(e: BaseException) -> str | None:
    """One line for a machine that ran out of memory or disk or refused a file, or None for any
    other error (a bug, whose traceback is what a report needs)."""
    import errno

    import torch

    from ffl.errors import one_line, unwritten

    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return f"disk full: {e.filename or 'an output'} could not be written; free space and run it again"
    if isinstance(e, OSError) and e.filename:  # the machine refused a file (permissions, a read-only mount)
        return f"{e.filename}: {e.strerror or e}"
    if unwritten(e):  # a torch file written outside ffl.atomic (torch.export's)
        return f"a file could not be written whole (disk full?): {one_line(e)[:120]}"
    out_of_memory = isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )
    if out_of_memory:
        return "out of memory: lower the batch size, the model or the dataset size (params), or use a larger machine"
    return None


def outcome(e: BaseException, command: str = "") -> tuple[str, int] | None:
    """The line and exit code of one of the project's expected failures (bad input, a failed run,
    an interrupt, a machine out of memory or disk, a setting the library refused), or None for any
    other error: a bug, whose traceback is what a report needs. ``command``: the command's name."""
    from ffl.errors import DataError, SettingError  # (ffl loads torch: not at every command's start)

    if isinstance(e, UserError):
        return str(e), 2
    if isinstance(e, PeerStopped):
        return str(e), PeerStopped.EXIT_CODE
    if isinstance(e, TrainingFailed):
        return str(e), 1
    if isinstance(e, Interrupted):
        return str(e), 130
    if isinstance(e, KeyboardInterrupt):
        return (INTERRUPTED_TRAINING if command == "train" else INTERRUPTED), 130
    if isinstance(e, SettingError):  # a setting the library refused: the params' key named
        from pipeline.params.schema import params_key

        return f"{params_key(e.key)}: {e.reason}", 2
    if isinstance(e, DataError):  # a file of the dataset, named, found unusable mid-run
        return str(e), 2
    if (reason := resource_exhausted(e)) is not None:
        return reason, 1
    return None


def error_boundary(fn):
    """A command's error boundary: an expected failure (``outcome``) becomes one line on stderr and
    its exit code; anything else is a bug, and its traceback is left as it is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # SIGTERM (a scheduler pre-empting the job) ends the run like Ctrl-C: the last checkpoint
        # is whole either way, this only makes the exit say so.
        try:
            with terminate_is_interrupt():
                return fn(*args, **kwargs)
        except (Exception, KeyboardInterrupt) as e:
            if isinstance(e, typer.Exit) or (known := outcome(e, fn.__name__)) is None:
                raise
            fail(*known)

    return wrapper
