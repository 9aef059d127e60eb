"""`ffl train` with ``train.processes`` > 1 on one machine: torchrun (``torch.distributed.run``, the
same launcher a multi-machine run uses from the command line) starts the processes, each one
``python -m pipeline train`` on the validated params, one rank of a DDP run (pipeline/stages/train.py).

torchrun's elastic agent watches them: when one fails, it stops the others (``--max-restarts 0``:
a crash is not retried, the run resumes from its last checkpoint when started again). Here its
failure becomes one line naming the process and its exit; each process has written its own
reason above it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import NoReturn

import yaml

from pipeline.boundary import outcome, say
from pipeline.errors import Interrupted, PeerStopped, TrainingFailed, UserError
from pipeline.params import Params
from pipeline.signals import INTERRUPTED_TRAINING, RANK_OF_LAUNCHER


def torchrun_args(processes: int, params_file: Path, fresh: bool) -> list[str]:
    """torchrun's command line for one machine's ``processes`` ranks of `ffl train` on ``params_file``."""
    return [
        "--standalone",
        f"--nproc-per-node={processes}",
        "--max-restarts=0",
        "--monitor-interval=0.5",
        "-m",
        "pipeline",
        "train",
        "--params",
        str(params_file),
        *(["--fresh"] if fresh else []),
    ]


def train_processes(params: Params, fresh: bool) -> None:
    """Runs the ranks to the end; rank 0 saves (and reports) the model."""

    n = params.train.processes
    # The processes share this machine's cores: torchrun would give each one thread, ours is the
    # even share (unless the user set it). The workers inherit it; this process gets its own back.
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = threads or str(max(1, (os.cpu_count() or n) // n))
    os.environ[RANK_OF_LAUNCHER] = "1"
    try:
        _run(params, n, fresh)
    finally:
        os.environ.pop(RANK_OF_LAUNCHER, None)
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


# The folder (set by the launcher for its ranks) where each failing rank records why it is leaving.
EXITS = "FFL_RANK_EXITS"


def record_exit(rank: int, code: int) -> None:
    """A failing DDP rank records the code it is leaving with, as soon as that is decided and before
    it leaves (``leave_rank``). torchrun's view can differ: a rank still ending is not in the poll
    that caught the peer that saw it go."""
    if folder := os.environ.get(EXITS):
        (Path(folder) / f"{rank}").write_text(f"{code}\n")


def leave_rank(rank: int, e: BaseException) -> NoReturn:
    """A failing DDP rank's end: its exit code recorded (``record_exit``), its reason said as the
    boundary says it (one line, or a bug's traceback), and the process gone without the teardown of
    its process group. With a peer gone, that teardown is where gloo's C++ destructors abort
    (SIGABRT, "terminate called without an active exception" on stderr), after the reason was
    decided; nothing of the run is left to write by then (checkpoints are atomic, the lock is
    released on the way out of the training)."""
    # The reason is decided: the launcher stopping this process while it reports and leaves (its
    # peers went first) must not turn it into an interrupt.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    known = outcome(e, "train")
    code = 1 if known is None else known[1]
    record_exit(rank, code)
    if known is None:
        traceback.print_exception(e)
    else:
        say(*known)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def recorded_exits(folder: Path) -> dict[int, int]:
    """What ``record_exit`` wrote: {rank: the exit code it was leaving with}."""
    return {int(f.name): int(f.read_text()) for f in folder.iterdir() if f.name.isdigit()}


def first_failure(exits: dict[int, int], recorded: dict[int, int] | None = None) -> tuple[int, int]:
    """The process to name, and its exit code, from the exit codes of those that failed.

    When one process fails, the others end too, and those that ended in the same poll of torchrun's
    are in its failures as well: a process that saw its peer go (PeerStopped), one that the launcher
    stopped (SIGTERM: interrupted, or killed if it was already ending). torchrun names the lowest
    rank of them; this names the one whose failure was its own, then an interrupt, then the rest.
    ``recorded``: the codes the ranks recorded as they failed (``record_exit``); a rank's record is
    its reason, whatever torchrun saw of its end, and counts for a rank that torchrun did not catch.
    """
    exits = exits | (recorded or {})
    secondary = (130, -signal.SIGTERM, PeerStopped.EXIT_CODE)

    def order(rank: int) -> tuple[int, int]:
        code = exits[rank]
        return (secondary.index(code) + 1 if code in secondary else 0), rank

    rank = min(exits, key=order)
    return rank, exits[rank]


@contextlib.contextmanager
def launcher_logs_quiet():
    """torchrun's agent logs each process it stops and each failure (W/E lines with its source
    paths); ffl's one line says the same. Set LOGLEVEL (torchrun's own switch) to see them."""
    if "LOGLEVEL" in os.environ:
        yield
        return
    names = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")
    loggers = [logging.getLogger(n) for n in names]
    before = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.propagate, lg.handlers = False, [logging.NullHandler()]
    try:
        yield
    finally:
        for lg, (propagate, handlers) in zip(loggers, before, strict=True):
            lg.propagate, lg.handlers = propagate, handlers


def _run(params: Params, n: int, fresh: bool) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    with tempfile.TemporaryDirectory(prefix="ffl-train-") as tmp:
        # The ranks read exactly the params validated here (overrides applied), not the file again.
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        exits = Path(tmp) / "exits"
        exits.mkdir()
        os.environ[EXITS] = str(exits)
        try:
            with launcher_logs_quiet():
                run(get_args_parser().parse_args(torchrun_args(n, params_file, fresh)))
        except ChildFailedError as e:
            rank, code = first_failure({r: f.exitcode for r, f in e.failures.items()}, recorded_exits(exits))
            how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
            message = (
                f"training process {rank} of {n} {how}, and the others were stopped "
                "(each process's own error is above); after a crash, the same command resumes from the last "
                "finished epoch"
            )
            if code == 2:  # the ranks refused the run before training (their one-line reason is above)
                raise UserError(f"training process {rank} of {n} refused the run (its reason is above)") from None
            if code == 130:
                raise Interrupted(INTERRUPTED_TRAINING) from None
            raise TrainingFailed(message) from None
        except SignalException:
            raise Interrupted(INTERRUPTED_TRAINING) from None
        finally:
            os.environ.pop(EXITS, None)
