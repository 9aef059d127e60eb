"""The stages. Each is one function that `dvc repro` (through the `ffl` CLI) and a user both call."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import zipfile
from pathlib import Path

import torch
from filelock import FileLock, Timeout

from ffl import distributed
from ffl.artifact import load_model, save_model
from ffl.cam import cam_picture, class_activation_maps, pick_examples
from ffl.checkpoint import CheckpointError, atomic_write_bytes, atomic_write_text, replace_directory
from ffl.data import (
    ArrayDataset,
    Augment,
    Dataset,
    DatasetNotFound,
    FileDataset,
    FileSettings,
    load_cifar,
    load_dataset,
    load_imagefolder,
    load_imagenet,
    make_shapes,
    prepared_provenance,
    split_loader,
)
from ffl.data.arrays import check_meta
from ffl.data.file_loader import default_workers
from ffl.deploy import FORMATS, IMAGE_SUFFIXES, MANIFEST, Deployable, InputSpec, image_files, load_images
from ffl.deploy import export as deploy_export
from ffl.deploy import predict as deploy_predict
from ffl.engine import NonFiniteLoss, TrainConfig, Trainer
from ffl.methods import build_method
from ffl.metrics import evaluate_and_predict
from ffl.precision import resolve_precision
from ffl.step_mode import StepMode, StepModeError, step_mode
from pipeline import paths
from pipeline.callbacks import DVCLiveCallback, ProgressCallback, progress_bar
from pipeline.errors import TrainingFailed, UserError
from pipeline.params import Params, method_spec


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
            raise UserError(f"train.device: {name} is not usable here ({str(e).splitlines()[0]})") from None
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


# -- prepare -----------------------------------------------------------------------------------


def prepare(params: Params, out: Path = paths.PREPARED) -> Dataset:
    """Small datasets become uint8 arrays; image-file datasets (ImageNet) an index of their files."""
    d = params.data
    try:
        if d.source == "shapes":
            s = d.shapes
            data = make_shapes(s.train_per_class, s.test_per_class, d.split_fraction(), s.noise, d.seed)
        elif d.source == "imagenet":
            data = load_imagenet(d.root, d.split_fraction(), d.seed)
        elif d.source == "imagefolder":
            data = load_imagefolder(d.root, d.split_fraction(), d.seed)
        else:
            data = load_cifar(d.source, d.root, d.split_fraction(), d.seed, download=d.download)
    except DatasetNotFound as e:
        raise UserError(f"data.root: {e}") from None
    ensure_writable(out)
    data.save(out, params.data.provenance())
    return data


def check_provenance(what: str, made_with: dict | None, params: Params, fix: str) -> None:
    """``what`` (prepared data, a model) was made with the data params these params ask for."""
    wanted = params.data.provenance()
    if made_with is None:
        raise UserError(f"{what}: made by an older version of ffl, with no record of its data params; {fix}")
    if not isinstance(made_with, dict):
        raise UserError(f"{what}: its record of the data params is malformed; {fix}")
    differ = [k for k in wanted if made_with.get(k) != wanted[k]]
    if differ:
        then = ", ".join(f"{k}={made_with.get(k)}" for k in differ)
        now = ", ".join(f"{k}={wanted[k]}" for k in differ)
        raise UserError(f"{what}: made with {then}, but the params say {now}; {fix}")


def load_prepared(params: Params, directory: Path = paths.PREPARED) -> Dataset:
    """The prepared dataset, refused unless it was made from these params' data settings."""
    try:
        data = load_dataset(directory)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{directory}: prepared dataset is unreadable ({e}); run `{params.command('prepare')}` again"
        ) from None
    check_provenance(
        str(directory),
        prepared_provenance(directory),
        params,
        f"run `{params.command('prepare')}` (`dvc repro` runs it)",
    )
    if isinstance(data, FileDataset):
        # The index holds paths, not pixels: found out here, not in a DataLoader worker mid-epoch.
        first = Path(data.root) / str(data.splits["train"].paths[0])
        if not first.is_file():
            raise UserError(
                f"{directory}: indexes images under {data.root}, but {first} is not there "
                f"(moved? set data.root and run `{params.command('prepare')}` again)"
            )
    return data


# -- train -------------------------------------------------------------------------------------


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
    try:
        return step_mode(
            params.method_class,
            params.settings(),
            device.type,
            resolve_precision(t.precision, device),
            t.compile,
            t.cuda_graph,
            t.processes,
        )
    except StepModeError as e:
        raise UserError(f"train.{e.key}: {e.reason}") from None


def loader(
    params: Params,
    data: Dataset,
    split: str,
    device: torch.device,
    train: bool = False,
    ranks: distributed.Ranks = distributed.Ranks(),
    views: int = 1,
):
    """The one way the stages (and tune trials) turn a prepared split into batches (this rank's
    part of each, under DDP)."""
    a, f = params.data.augment, params.data.files
    return split_loader(
        data,
        split,
        params.train.batch_size if train else params.evaluate.batch_size,
        device,
        train=train,
        keep_last=params.data.keep_last_batch(),
        seed=params.seed,
        channels_last=params.train.channels_last,
        augment=Augment(a.pad, a.pad_mode, a.flip),
        files=FileSettings(f.image_size, f.resize, default_workers() if f.workers == "auto" else f.workers),
        ranks=ranks,
        views=views,
    )


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
        distributed.end_with_launcher()
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
                raise TrainingFailed(f"process {ranks.rank}: another process of the run stopped") from None
            raise


def _train(params: Params, data: Dataset, device: torch.device, fresh: bool, progress: bool, main: bool) -> Path:
    """One process's training: rank 0 (``main``) holds the lock and writes the checkpoints, the
    curves and the model; other ranks only train."""
    if not main:
        trainer = build_trainer(params, data, device, checkpoint=paths.CHECKPOINT)  # read through rank 0
        trainer.resume_if_possible()
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
            raise UserError(str(e)) from None
        trainer.fit()  # a diverged run: TrainingFailed from train(), for every rank alike
        finish_run(trainer.method, params, data)
        # The finished run lives on in the model file; a stale checkpoint would only block the next
        # configuration from starting.
        paths.CHECKPOINT.unlink(missing_ok=True)
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
    replace_directory(paths.LIVE, paths.DVCLIVE)


def deployed(method) -> str:
    return method.deployed(method.num_subnets, method.settings)


# -- evaluate ----------------------------------------------------------------------------------


def summarise(errors: dict[str, dict[str, float]]) -> dict:
    """``{"test": {"top1_err": {classifier: %}, "top5_err": {...}}}``, the sub-networks' mean added:
    named like the training curves (``val/top1_err/fused``), so `dvc exp show` columns line up."""
    subs = [v for k, v in errors.items() if k.startswith("sub")]
    out = dict(errors)
    if len(subs) > 1:
        out["sub_mean"] = {m: sum(s[m] for s in subs) / len(subs) for m in ("top1_err", "top5_err")}
    return {"test": {m: {name: round(errs[m], 4) for name, errs in out.items()} for m in ("top1_err", "top5_err")}}


def evaluate(
    params: Params, out: Path = paths.TEST_METRICS, confusion: Path = paths.CONFUSION, cam: Path = paths.CAM
) -> dict:
    """Top-1/top-5 error of every classifier on the test split, written as DVC metrics."""
    device = resolve_device(params.train.device)
    ensure_writable(files=(out, confusion, cam))
    try:
        method, info = load_model(paths.MODEL)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    data = load_prepared(params)
    check_provenance(
        str(paths.MODEL), info.get("provenance"), params, f"run `{params.command('train')}` (`dvc repro` runs it)"
    )
    check_same_model(method, params, data.num_classes)
    trained_on = (info.get("input") or {}).get("size")
    if isinstance(data, ArrayDataset) and trained_on and data.splits["test"].images.shape[-1] != trained_on:
        raise UserError(
            f"{paths.PREPARED}: test images of {data.splits['test'].images.shape[-1]} px, but the model was trained "
            f"on {trained_on} px; run `{params.command('prepare')}` again"
        )
    test = loader(params, data, "test", device)
    method.to(device)
    if params.train.channels_last:
        method.to(memory_format=torch.channels_last)
    precision = resolve_precision(params.train.precision, device)
    # One pass: every classifier's errors, and the predictions of the one a user deploys (fused,
    # else the ensemble, else the one network) for the confusion matrix.
    errors, pred = evaluate_and_predict(
        method, test, (deployed(method),), precision, progress=progress_bar("evaluating")
    )
    result = summarise(errors)
    # Which protocol the numbers come from, visible next to them (dvc metrics show).
    result["data"] = {"train_images": len(data.splits["train"]), "protocol_paper": int(params.data.protocol == "paper")}
    rows = [
        {"actual": data.classes[a], "predicted": data.classes[b]} for a, b in zip(pred["targets"], pred["predicted"])
    ]
    picture = cam_picture_png(method, test, data)
    # The three files are one result: written together, with Ctrl-C and SIGTERM held off for the
    # few milliseconds it takes, so an interrupt leaves all of them old or all of them new.
    with signals_deferred():
        atomic_write_text(confusion, json.dumps({"classifier": pred["classifier"], "rows": rows}) + "\n")
        atomic_write_bytes(cam, picture)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result


@contextlib.contextmanager
def signals_deferred():
    """SIGINT and SIGTERM wait until the block is done, then reach their usual handler. (Python's
    handlers, not a signal mask: a mask holds for one thread, and torch's threads would take them.)"""
    caught: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:  # the default action (SIGTERM ends the process)
                os.kill(os.getpid(), caught[0])


CAM_IMAGES = 8  # test images in the picture: the first of each of the first eight classes


def check_same_model(method, params: Params, num_classes: int) -> None:
    """The model file holds the network the params describe: metrics are recorded against them."""
    saved, wanted = method.spec(), method_spec(params, num_classes)
    names = {"method": "method.name", "archs": "model.archs", "shared": "model.shared", "settings": "method settings"}
    differ = [k for k in names if saved.get(k) != wanted.get(k)]
    if differ:
        then = ", ".join(f"{names[k]}={saved.get(k)}" for k in differ[:2])
        raise UserError(
            f"{paths.MODEL}: trained with {then}, which the params do not say; run `{params.command('train')}` "
            "(`dvc repro` runs it)"
        )


def cam_picture_png(method, test, data: Dataset) -> bytes:
    """Class activation maps of every classifier for a fixed set of test images (the first of each
    class, in the test split's order), for the true class: where each one sees the evidence."""
    images, targets = next(iter(test))
    chosen = pick_examples(targets.cpu(), CAM_IMAGES).to(images.device)
    images, targets = images[chosen], targets[chosen]
    method.eval()
    maps = class_activation_maps(method, images.float(), targets)
    mean = torch.tensor(data.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(data.std, device=images.device).view(1, 3, 1, 1)
    picture = cam_picture((images.float() * std + mean).cpu(), maps, [data.classes[t] for t in targets.tolist()])
    png = io.BytesIO()
    picture.save(png, format="PNG")
    return png.getvalue()


# -- using the trained model -------------------------------------------------------------------


def trained_model(model: Path = paths.MODEL):
    """``(method, its input spec, its class names)`` from the model file (eval mode, CPU)."""
    try:
        method, info = load_model(model)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    if "input" not in info:
        raise UserError(f"{model}: made by an older version of ffl, with no record of its input size; run `ffl train`")
    check_model_info(model, info, method)
    spec = InputSpec(info["input"]["size"], info["input"]["resize"], tuple(info["mean"]), tuple(info["std"]))
    return method.eval(), spec, list(info["classes"])


def check_model_info(model: Path, info: dict, method) -> None:
    """The model file's record of its data (classes, normalisation, input size) is whole and fits
    the network: what predict, export and evaluation read it for."""
    try:
        check_meta(info)
        size = info["input"]["size"]
        resize = info["input"]["resize"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 4096 for v in (size, resize)):
            raise ValueError(f"input size {size!r} / resize {resize!r} is not a whole number of pixels from 8")
        if len(info["classes"]) != method.spec()["num_classes"]:
            raise ValueError(f"{len(info['classes'])} class names for {method.spec()['num_classes']} outputs")
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{model}: its record of the data is malformed ({e})") from None


def check_classifier(method, name: str) -> str:
    names = method.outputs(method.num_subnets, method.settings)
    if name == "auto":
        return deployed(method)
    if name not in names:
        raise UserError(f"--classifier: {method.name} has {', '.join(names)}; got {name!r}")
    return name


def export(
    classifiers: list[str] | None = None,
    formats: list[str] | None = None,
    out: Path = paths.EXPORT,
    model: Path = paths.MODEL,
) -> list[Path]:
    """Standalone files of the trained classifiers (default: every sub-network alone and the
    deployed one) as torch.export programs and ONNX, with model.json describing their input."""
    method, spec, classes = trained_model(model)
    if classifiers:
        names = [check_classifier(method, c) for c in classifiers]
    else:
        names = [f"sub{i}" for i in range(method.num_subnets)]
        names += [deployed(method)] if deployed(method) not in names else []
    unknown = [f for f in formats or () if f not in FORMATS]
    if unknown:
        raise UserError(f"--format: {unknown[0]!r}; expected one of {', '.join(FORMATS)}")
    check_export_folder(out)
    ensure_writable(out.parent)
    model_id = hashlib.sha256(model.read_bytes()).hexdigest()
    # Written beside, then swapped in: a failed export leaves the previous files whole. An earlier
    # export of the same model keeps its other files; another model's is replaced whole.
    staging = out.with_name(f".{out.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    earlier = out if out.is_dir() else None
    try:
        files = deploy_export(method, spec, classes, staging, names, formats or FORMATS, model_id, earlier)
        dropped = sorted(p.name for p in out.iterdir() if not (staging / p.name).exists()) if earlier else []
        if dropped:
            print(f"{out}: its earlier files ({', '.join(dropped[:3])}{' ...' if len(dropped) > 3 else ''}) were "
                  f"exported from another model; replaced by this model's")  # fmt: skip
        replace_directory(staging, out)
    except OSError as e:
        raise UserError(f"--out: cannot write {out} ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / f.name for f in files]


def check_export_folder(out: Path) -> None:
    """``--out`` is replaced whole: it may only be a new folder or one that holds an export."""
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise UserError(f"--out: {out} is the project itself; name a folder of its own (models/export)")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"--out: {out} is not a folder")
    if out.is_dir():
        if os.path.ismount(out):
            raise UserError(f"--out: {out} is a mount point; name a folder inside it")
        foreign = [p.name for p in out.iterdir() if p.name != MANIFEST and p.suffix.lstrip(".") not in FORMATS]
        if foreign:
            raise UserError(
                f"--out: {out} holds other files ({', '.join(sorted(foreign)[:3])}); an export replaces its folder "
                "whole, so name a new one or an earlier export's"
            )


def predict(
    inputs: list[Path], classifier: str = "auto", top: int = 3, model: Path = paths.MODEL
) -> tuple[list[dict], list[tuple[Path, str]]]:
    """``([{"file", "classifier", "top": [[class, probability], ...]}], [(unreadable file, why)])``."""
    method, spec, classes = trained_model(model)
    name = check_classifier(method, classifier)
    files = image_files(inputs)
    if not files:
        raise UserError(f"no image files in {', '.join(map(str, inputs))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    images, kept, failed = load_images(files, spec)
    probs = deploy_predict(Deployable(method, name, spec).eval(), images)
    k = min(top, len(classes))
    results = []
    for path, p in zip(kept, probs):
        values, indices = p.topk(k)
        top_k = [[classes[i], round(float(v), 6)] for v, i in zip(values, indices)]
        results.append({"file": str(path), "classifier": name, "top": top_k})
    return results, failed
