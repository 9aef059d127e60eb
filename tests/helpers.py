"""Tiny params for end-to-end runs: seconds on a CPU."""

import copy
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(**sections) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["shapes"] = {"train_per_class": 16, "test_per_class": 6, "noise": 0.1}
    raw["data"]["val_fraction"] = 0.25
    raw["model"]["arch"] = "resnet8"
    raw["train"].update(epochs=2, batch_size=32, device="cpu")
    raw["evaluate"]["batch_size"] = 50
    raw["method"]["ffl"]["rampup_epochs"] = 1
    for key, value in sections.items():
        raw[key] = copy.deepcopy(value) if not isinstance(value, dict) else {**raw.get(key, {}), **value}
    return raw


def tune_section(**changes) -> dict:
    """params.yaml's tune section with ``changes``: scheduler and resources merged key by key, the
    search space replaced whole (a params file lists every key; none has a hidden default)."""
    tune = tiny_params()["tune"]
    for key, value in changes.items():
        tune[key] = {**tune[key], **value} if key in ("scheduler", "resources") else value
    return tune


def write_params(directory: Path, raw: dict) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
