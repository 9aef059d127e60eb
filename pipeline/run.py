"""A training run as every command builds it (train, reproduce's runs, tune's trials, stacked
seeds): its trainer, what makes two runs the same run, and what a finished run leaves."""

from __future__ import annotations

import json

import torch

from ffl import atomic, distributed
from ffl.artifact import save_model
from ffl.data import ArrayDataset, Dataset, FileDataset
from ffl.deploy import InputSpec
from ffl.engine import TrainConfig, Trainer
from ffl.methods import build_method
from ffl.precision import resolve_precision
from ffl.step_mode import StepMode, step_mode
from pipeline import paths
from pipeline.dataset import loader
from pipeline.errors import UserError
from pipeline.params import Params, method_spec, validate


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


def run_identity(raw: dict, seed: bool = True) -> str | None:
    """What makes two runs the same run, as one string: the run config of their params (``run_config``,
    by which a resumed run recognises its checkpoint), validated first, so that key order, ``1``
    against ``1.0`` and a default written out (``model.subnets: auto`` or the count it stands for)
    make no difference. Without the seed where ``seed`` is false: the runs of one row of a table.
    None for params that are not valid (an experiment of an older version)."""
    try:
        cfg = run_config(validate(raw))
    except UserError:
        return None
    if not seed:
        cfg.pop("seed")
    return json.dumps(cfg, sort_keys=True, default=str)


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
