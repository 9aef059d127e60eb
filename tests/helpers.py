"""Tiny params for end-to-end runs: seconds on a CPU."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


def temperature_search(**changes) -> dict:
    """A small search: a few one-epoch trials over FFL's temperature, in the order they come."""
    return tune_section(
        **{
            "trials": 2,
            "epochs": 1,
            "sampler": "random",
            "scheduler": {"name": "fifo"},
            "space": {"method": {"ffl": {"temperature": {"type": "uniform", "low": 2.0, "high": 4.0}}}},
        }
        | changes
    )


# A row of a paper's table on the embedded dataset for one short epoch (`-S` pairs): its
# architecture, method and settings, other data.
TINY_RUN = [
    "data.source=shapes",
    "data.shapes.train_per_class=8",
    "data.shapes.test_per_class=4",
    "train.epochs=1",
    "train.batch_size=16",
    "train.device=cpu",
    "train.compile=off",
]


def write_params(directory: Path, raw: dict) -> Path:
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# This environment's tools (dvc) first on PATH, for the commands tests run as a user would.
ENV = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def sh(cmd, cwd) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, shell=isinstance(cmd, str), env=ENV)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def project_repo(d: Path, raw: dict, ignore: str = "__pycache__/\n/data/\n/models/\n/checkpoints/\n") -> Path:
    """A copy of this project (code, pipeline, presets) with ``raw`` as params.yaml, committed in a
    fresh git + DVC repository."""
    for name in ("ffl", "pipeline", "configs"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d)
    write_params(d, raw)
    (d / ".gitignore").write_text(ignore)
    sh("git init -q && git config user.email t@t && git config user.name t && dvc init -q", d)
    shutil.copytree(ROOT / ".dvc/plots", d / ".dvc/plots")  # the charts' template
    sh("git add -A && git commit -qm init", d)
    return d


# -- tune searches run as a user runs them -------------------------------------------------------

FFL_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


def ffl(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=FFL_ENV, capture_output=True, text=True
    )


# root without its capabilities (CAP_DAC_OVERRIDE & co.): a chmod'ed folder or file refuses it as it
# refuses any user (tests and CI run as root, which the mode bits alone would not stop).
WITHOUT_CAPABILITIES = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"]
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")


def ffl_as_a_user(cwd, *args):
    """`ffl ARGS` as a process whose file permissions are a user's (see WITHOUT_CAPABILITIES)."""
    return subprocess.run(
        [*WITHOUT_CAPABILITIES, sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=FFL_ENV,
        capture_output=True,
        text=True,
    )


def read_trials(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def search_params(**tune):
    raw = tiny_params()
    defaults = {
        "trials": 3,
        "epochs": 2,
        "sampler": "random",
        "seed": 0,
        "scheduler": {"name": "fifo"},
        "resources": {"cpu": 1, "gpu": 0},
        "space": {
            "method": {"ffl": {"temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}},
            "train": {"lr": {"type": "choice", "values": [0.05, 1.0e30]}},  # 1e30 diverges at once
        },
    }
    raw["tune"] = tune_section(**(defaults | tune))
    return raw


def search_until_one_trial_finished(workdir, args=(), **popen) -> tuple[subprocess.Popen, str]:
    """`ffl tune ARGS` of three 3-epoch trials, one at a time, left running once the first has
    finished; returns the driver process and that trial's id. The driver's stderr goes to
    WORKDIR/driver.err unless POPEN says otherwise, so that a driver that ends early says why."""
    import time

    write_params(
        workdir,
        search_params(
            trials=3,
            max_concurrent=1,
            epochs=3,
            space={"method": {"ffl": {"temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}}},
        ),
    )
    assert ffl(workdir, "prepare").returncode == 0
    log = workdir / "driver.err"
    popen.setdefault("stderr", log.open("w"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "tune", *args],
        cwd=workdir,
        env=FFL_ENV,
        text=True,
        stdout=subprocess.PIPE,
        **popen,
    )
    deadline = time.time() + 300
    seen = []
    for line in proc.stdout:
        if "finished: 1/3 done" in line:
            return proc, line.split()[2]
        seen.append(line)
        assert time.time() < deadline
    proc.wait()
    err = proc.stderr.read() if proc.stderr else log.read_text() if log.exists() else ""
    raise AssertionError(
        f"the search ended (exit {proc.returncode}) before its first trial finished:\n"
        f"{''.join(seen)[-2000:]}\n{err[-3000:]}"
    )
