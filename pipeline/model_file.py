"""The trained model file: what it holds (the method, its input, its classes) and the checks that
its record is whole, for everything that reads it (evaluate, export, predict)."""

from __future__ import annotations

from pathlib import Path

from ffl.artifact import load_model
from ffl.checkpoint import CheckpointError
from ffl.data.dataset import check_meta
from ffl.deploy import InputSpec
from pipeline import paths
from pipeline.errors import UserError


def deployed(method) -> str:
    return method.deployed(method.num_subnets, method.settings)


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
