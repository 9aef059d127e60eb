"""The train stage: one run, resumed from its checkpoint when the configuration is the same; over
several DDP processes when ``train.processes`` says so; under the directory's lock."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from ffl import distributed
from ffl.checkpoint import CheckpointError
from ffl.data import Dataset
from ffl.engine import NonFiniteLoss, read_checkpoint
from pipeline import paths
from pipeline.callbacks import DVCLiveCallback, ProgressCallback
from pipeline.dataset import load_prepared
from pipeline.errors import PeerStopped, TrainingFailed, UserError
from pipeline.launch import leave_rank, train_processes
from pipeline.params import Params
from pipeline.run import build_trainer, finish_run, run_config
from pipeline.runtime import ensure_writable, resolve_device
from pipeline.signals import end_with_parent


def train(params: Params, fresh: bool = False, progress: bool = True) -> Path | None:
    """Trains, checkpointing every epoch, resuming from the last checkpoint of the same configuration.

    With ``train.processes`` > 1 it starts that many DDP processes on this machine through torchrun,
    each of which comes back here as one rank (pipeline/launch.py); under an outside torchrun
    (several machines) this process is one rank already. Returns the model file where this process
    saved it (rank 0), else None."""
    try:
        ranks = distributed.launched()
    except ValueError as e:
        raise UserError(f"torchrun's environment: {e}") from None
    if ranks is None and params.train.processes > 1:
        # What every process would refuse, refused once before they start.
        device = resolve_device(params.train.device)
        if device.type == "cuda" and torch.cuda.device_count() < params.train.processes:
            raise UserError(
                f"train.processes: {params.train.processes} processes need as many GPUs; "
                f"this machine has {torch.cuda.device_count()}"
            )
        load_prepared(params)
        ensure_writable(paths.CHECKPOINTS, files=(paths.MODEL,))
        training_lock().release()  # another training in this directory: said here, not by each rank
        if not fresh and paths.CHECKPOINT.exists():
            try:
                read_checkpoint(paths.CHECKPOINT, run_config(params))
            except CheckpointError as e:
                raise UserError(checkpoint_refused(e)) from None
        return train_processes(params, fresh)
    if ranks is not None:
        end_with_parent()
    ranks = ranks or distributed.Ranks()
    if ranks.world != params.train.processes:
        raise UserError(
            f"train.processes: {params.train.processes}, but torchrun started {ranks.world} processes; "
            f"set train.processes={ranks.world} (the global batch and the results depend on it)"
        )
    try:
        device = distributed.rank_device(resolve_device(params.train.device), ranks)
    except ValueError as e:
        raise UserError(f"train.processes: {e}") from None
    data = load_prepared(params)
    with distributed.process_group(device, ranks):
        try:
            if not ranks.main:
                _train(params, data, device, fresh=False, progress=False, main=False)
                return None  # rank 0 saves the model
            ensure_writable(paths.CHECKPOINTS)
            return _train(params, data, device, fresh, progress, main=True)
        except Exception as e:
            failure = TrainingFailed(str(e)) if isinstance(e, NonFiniteLoss) else e
            if not ranks.distributed:
                if failure is e:
                    raise
                raise failure from None
            if distributed.peer_stopped(e):
                failure = PeerStopped(f"process {ranks.rank}: another process of the run stopped")
            leave_rank(ranks.rank, failure)


def training_lock() -> FileLock:
    """The directory's training lock, taken (one training at a time writes its checkpoints)."""
    lock = FileLock(str(paths.LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"{paths.CHECKPOINTS}: another training is running in this directory") from None
    except OSError as e:
        raise UserError(f"{paths.LOCK}: cannot take the training lock ({e.strerror}); remove it") from None
    return lock


def checkpoint_refused(e: CheckpointError) -> str:
    """The checkpoint is the run's own file, so the way out is to start over (every rank alike)."""
    return str(e) if "--fresh" in str(e) else f"{e}; delete it or train with --fresh to start over"


def _train(params: Params, data: Dataset, device: torch.device, fresh: bool, progress: bool, main: bool) -> Path:
    """One process's training: rank 0 (``main``) holds the lock and writes the checkpoints, the
    curves and the model; other ranks only train."""
    if not main:
        trainer = build_trainer(params, data, device, checkpoint=paths.CHECKPOINT)  # read through rank 0
        try:
            trainer.resume_if_possible()
        except CheckpointError as e:
            raise UserError(checkpoint_refused(e)) from None
        trainer.fit()
        return paths.MODEL
    lock = training_lock()
    try:
        ensure_writable(paths.DVCLIVE.parent, files=(paths.MODEL,))
        callbacks = [DVCLiveCallback(paths.LIVE)] + ([ProgressCallback()] if progress else [])
        trainer = build_trainer(params, data, device, callbacks, paths.CHECKPOINT)
        if fresh:
            paths.CHECKPOINT.unlink(missing_ok=True)
        try:
            if trainer.resume_if_possible():
                done, total = trainer.start_epoch, trainer.config.epochs
                print(f"resuming from {paths.CHECKPOINT} at epoch {done + 1}/{total} ({done} done)")
        except CheckpointError as e:
            raise UserError(checkpoint_refused(e)) from None
        trainer.fit()  # a diverged run: TrainingFailed from train(), for every rank alike
        finish_run(trainer.method, params, data)
        # The finished run lives on in the model file; a stale checkpoint would only block the next
        # configuration from starting.
        paths.CHECKPOINT.unlink(missing_ok=True)
    except BaseException:
        # Curves of epochs that no checkpoint holds are of nothing a rerun resumes (it rewrites them
        # from the checkpoint's history): a run that failed or stopped before its first checkpoint
        # leaves nothing of itself behind.
        if not paths.CHECKPOINT.exists():
            shutil.rmtree(paths.LIVE, ignore_errors=True)
        raise
    finally:
        lock.release()
    return paths.MODEL
