"""The trained model as a file: weights plus what is needed to rebuild the method, nothing executable."""

from __future__ import annotations

from pathlib import Path

from ffl import atomic
from ffl.checkpoint import CheckpointError, reading, safe_load
from ffl.methods import Method, build_method

MODEL_FORMAT = "ffl-model-v1"


def save_model(method: Method, path: str | Path, dataset: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in method.state_dict().items() if hasattr(v, "detach")}
    extra = {k: v for k, v in method.state_dict().items() if not hasattr(v, "detach")}
    atomic.torch_save(
        {"format": MODEL_FORMAT, "spec": method.spec(), "state_dict": state | extra, "dataset": dataset or {}}, path
    )


def load_model(path: str | Path) -> tuple[Method, dict]:
    """``(method, dataset_info)``; loads with ``weights_only=True``."""
    obj = safe_load(path, {"format": str, "spec": dict, "state_dict": dict})
    if obj["format"] != MODEL_FORMAT:
        raise CheckpointError(f"{path}: model format {obj['format']!r}, expected {MODEL_FORMAT!r}")
    with reading(path):
        method = build_method(obj["spec"])
        method.load_state_dict(obj["state_dict"])
    dataset = obj.get("dataset", {})
    if not isinstance(dataset, dict):
        raise CheckpointError(f"{path}: not a model of this project (dataset is a {type(dataset).__name__})")
    return method, dataset
