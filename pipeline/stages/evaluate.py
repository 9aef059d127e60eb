"""The evaluate stage: every classifier's test errors as DVC metrics, the deployed classifier's
confusion matrix, and the class activation maps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from ffl import atomic
from ffl.artifact import load_model
from ffl.cam import cam_picture, class_activation_maps, pick_examples
from ffl.checkpoint import CheckpointError
from ffl.config_diff import described, differences
from ffl.data import ArrayDataset, Dataset
from ffl.methods.base import is_subnetwork
from ffl.metrics import evaluate_and_predict
from ffl.precision import resolve_precision
from pipeline import paths
from pipeline.callbacks import progress_bar
from pipeline.dataset import check_provenance, load_prepared, loader
from pipeline.errors import UserError
from pipeline.model_file import deployed
from pipeline.params import Params, method_spec
from pipeline.runtime import ensure_writable, resolve_device
from pipeline.signals import signals_deferred

CAM_IMAGES = 8  # test images in the picture: the first of each of the first eight classes


def summarise(errors: dict[str, dict[str, float]]) -> dict:
    """``{"test": {"top1_err": {classifier: %}, "top5_err": {...}}}``, the sub-networks' mean added:
    named like the training curves (``val/top1_err/fused``), so `dvc exp show` columns line up."""
    subs = [v for k, v in errors.items() if is_subnetwork(k)]
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
    # The three files are one result: written together (a full disk leaves all of them old), with
    # Ctrl-C and SIGTERM held off while they are renamed, so an interrupt does too.
    with signals_deferred():
        atomic.write_together(
            {
                confusion: (json.dumps({"classifier": pred["classifier"], "rows": rows}) + "\n").encode(),
                cam: picture,
                out: (json.dumps(result, indent=2) + "\n").encode(),
            }
        )
    return result


def check_same_model(method, params: Params, num_classes: int) -> None:
    """The model file holds the network the params describe: metrics are recorded against them."""

    def as_params(spec: dict) -> dict:
        name = spec.get("method")
        return {
            "method": {"name": name, str(name): spec.get("settings")},
            "model": {"archs": spec.get("archs"), "shared": spec.get("shared")},
        }

    differ = differences(as_params(method.spec()), as_params(method_spec(params, num_classes)))
    if differ:
        raise UserError(
            f"{paths.MODEL}: trained with other params ({described(differ, shown=2)}); run "
            f"`{params.command('train')}` (`dvc repro` runs it)"
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
