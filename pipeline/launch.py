"""`ffl train` with ``train.processes`` > 1 on one machine: torchrun (``torch.distributed.run``, the
same launcher a multi-machine run uses from the command line) starts the processes, each one
``python -m pipeline train`` on the validated params, one rank of a DDP run (pipeline/stages/train.py).

torchrun's elastic agent watches them: when one fails, it stops the others (``--max-restarts 0``:
a crash is not retried, the run resumes from its last checkpoint when started again). Here its
failure becomes one line naming the process and its exit; each process has written its own
reason above it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import yaml

from pipeline.errors import Interrupted, TrainingFailed, UserError
from pipeline.params import Params
from pipeline.signals import INTERRUPTED_TRAINING


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
    try:
        _run(params, n, fresh)
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def _run(params: Params, n: int, fresh: bool) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    with tempfile.TemporaryDirectory(prefix="ffl-train-") as tmp:
        # The ranks read exactly the params validated here (overrides applied), not the file again.
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
        try:
            run(get_args_parser().parse_args(torchrun_args(n, params_file, fresh)))
        except ChildFailedError as e:
            rank, failure = e.get_first_failure()
            code = failure.exitcode
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
