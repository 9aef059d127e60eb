"""The train stage: one run, resumed from its checkpoint when the configuration is the same; over
several DDP processes when ``train.processes`` says so; under the directory's lock."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from ffl import atomic, distributed
from ffl.artifact import save_model
from ffl.checkpoint import CheckpointError
from ffl.data import ArrayDataset, Dataset, FileDataset
from ffl.deploy import InputSpec
from ffl.engine import NonFiniteLoss, TrainConfig, Trainer
from ffl.methods import build_method
from ffl.precision import resolve_precision
from ffl.step_mode import StepMode, step_mode
from pipeline import paths
from pipeline.callbacks import DVCLiveCallback, ProgressCallback
from pipeline.errors import PeerStopped, TrainingFailed, UserError
from pipeline.params import Params, method_spec
from pipeline.runtime import ensure_writable, resolve_device
from pipeline.signals import end_with_parent
from pipeline.stages.prepare import load_prepared, loader


def run_config(params: Params) -> dict:
    """What a resumed run must share with the checkpoint: everything that changes the result."""
    cfg = params.model_dump(mode="json", exclude={"evaluate", "tune", "reproduce"})
    cfg["train"].pop("device")  # a checkpoint may move between machines
    # The captured step replays the eager one exactly: a run that fails to capture on some GPU
    # resumes with cuda_graph false (README, "When things go wrong").
    cfg["train"].pop("cuda_graph")
    # Each image's augmentation has its own seed (ffl/data/file_loader.py): the number of decoding
    # workers changes the speed, never the batches.
    cfg["data"]["files"].pop("workers")
    cfg["model"] = {"archs": params.archs(), "shared": params.shared()}
    # The other methods' sections do not change this run.
    cfg["method"] = {"name": params.method.name, "settings": cfg["method"][params.method.name]}
    return cfg


def run_step_mode(params: Params, device: torch.device) -> StepMode:
    """ffl.step_mode for these params on this device (train.cuda_graph and train.compile, auto resolved)."""
    t = params.train
    p = resolve_precision(t.precision, device)
    return step_mode(params.method_class, params.settings(), device.type, p, t.compile, t.cuda_graph, t.processes)


def input_spec(params: Params, data: Dataset) -> InputSpec:
    """The images the model trains on: image files are centre-cropped as in evaluation (resize,
    then image_size); in-memory datasets are square arrays, a new image is brought to their side."""
    if isinstance(data, FileDataset):
        size, resize = params.data.files.image_size, params.data.files.resize
    else:
        size = resize = int(data.splits["train"].images.shape[-1])
    return InputSpec(size, resize, tuple(data.mean), tuple(data.std))


def build_trainer(params: Params, data: Dataset, device: torch.device, callbacks=(), checkpoint=None) -> Trainer:
    torch.manual_seed(params.seed)
    method = build_method(method_spec(params, data.num_classes))
    t = params.train
    if t.batch_size > len(data.splits["train"]):
        held = params.data.split_fraction()
        size = f"{len(data.splits['train'])} images"
        size += f", after data.val_fraction={held} of the training set was held out" if held else ""
        raise UserError(f"train.batch_size: {t.batch_size} is larger than the training split ({size})")
    a = params.data.augment
    if isinstance(data, ArrayDataset) and a.pad_mode == "reflect" and a.pad >= data.splits["train"].images.shape[-1]:
        size = data.splits["train"].images.shape[-1]
        raise UserError(f"data.augment.pad: reflect padding must be smaller than the images ({size} px); got {a.pad}")
    mode = run_step_mode(params, device)
    ranks = distributed.current()
    views = method.train_views(method.num_subnets, method.settings)
    train_loader = loader(params, data, "train", device, train=True, ranks=ranks, views=views)
    val = data.splits.get("val")
    val_loader = loader(params, data, "val", device, ranks=ranks) if val is not None and len(val) else None
    config = TrainConfig(
        epochs=t.epochs,
        lr=t.lr,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay,
        milestones=t.milestone_epochs(),
        gamma=t.gamma,
        precision=t.precision,
        compile=mode.compile,
        cuda_graph=mode.cuda_graph,
    )
    return Trainer(method, train_loader, config, val_loader, list(callbacks), checkpoint, run_config(params))


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
        from pipeline.launch import train_processes

        # What every process would refuse, refused once before they start.
        device = resolve_device(params.train.device)
        if device.type == "cuda" and torch.cuda.device_count() < params.train.processes:
            raise UserError(
                f"train.processes: {params.train.processes} processes need as many GPUs; "
                f"this machine has {torch.cuda.device_count()}"
            )
        load_prepared(params)
        ensure_writable(paths.CHECKPOINTS, files=(paths.MODEL,))
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
        except NonFiniteLoss as e:
            raise TrainingFailed(str(e)) from None
        except Exception as e:
            if ranks.distributed and distributed.peer_stopped(e):
                raise PeerStopped(f"process {ranks.rank}: another process of the run stopped") from None
            raise


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
    lock = FileLock(str(paths.LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"{paths.CHECKPOINTS}: another training is running in this directory") from None
    except OSError as e:
        raise UserError(f"{paths.LOCK}: cannot take the training lock ({e.strerror}); remove it") from None
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


def finish_run(method, params: Params, data: Dataset) -> None:
    """A trained run's outputs: the model file, with what it was trained on, and the curves
    (written to paths.LIVE while it trained) moved to paths.DVCLIVE beside it."""
    spec = input_spec(params, data)
    save_model(
        method,
        paths.MODEL,
        {
            "name": data.name,
            "classes": data.classes,
            "mean": list(data.mean),
            "std": list(data.std),
            "input": {"size": spec.size, "resize": spec.resize},
            "provenance": params.data.provenance(),
        },
    )
    atomic.replace_directory(paths.LIVE, paths.DVCLIVE)
