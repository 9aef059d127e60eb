"""The trained model as a file: weights plus what is needed to rebuild the method, nothing executable."""

from __future__ import annotations

from pathlib import Path

from ffl.checkpoint import CheckpointError, atomic_save, safe_load
from ffl.methods import Method, build_method

MODEL_FORMAT = "ffl-model-v1"


def save_model(method: Method, path: str | Path, dataset: dict | None = None) -> None:
    state = {k: v.detach().cpu() for k, v in method.state_dict().items() if hasattr(v, "detach")}
    extra = {k: v for k, v in method.state_dict().items() if not hasattr(v, "detach")}
    atomic_save(
        {"format": MODEL_FORMAT, "spec": method.spec(), "state_dict": state | extra, "dataset": dataset or {}}, path
    )


def load_model(path: str | Path) -> tuple[Method, dict]:
    """``(method, dataset_info)``; loads with ``weights_only=True``."""
    obj = safe_load(path, ("format", "spec", "state_dict"))
    if obj["format"] != MODEL_FORMAT:
        raise CheckpointError(f"{path}: model format {obj['format']!r}, expected {MODEL_FORMAT!r}")
    method = build_method(obj["spec"])
    try:
        method.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the saved spec: {str(e).splitlines()[0]}") from None
    return method, obj.get("dataset", {})
