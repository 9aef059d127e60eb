"""Interrupted runs resume exactly: real processes, real signals, bit-for-bit final metrics on the CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_params, write_params

pytestmark = pytest.mark.slow
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
EPOCHS = 6


def params():
    return tiny_params(
        data={"shapes": {"train_per_class": 24, "test_per_class": 6, "noise": 0.1}},
        train={"epochs": EPOCHS, "batch_size": 32, "device": "cpu"},
    )


def ffl(cwd, *args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=ENV, capture_output=True, text=True, **kw
    )


def start(cwd, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def checkpoint_epoch(cwd: Path) -> int:
    path = cwd / "checkpoints/last.pt"
    if not path.exists():
        return -1
    return int(torch.load(path, weights_only=True)["epoch"])  # atomic rename: never half-written


def kill_after(cwd: Path, sig, epoch: int) -> subprocess.Popen:
    proc = start(cwd, "train")
    deadline = time.time() + 120
    while checkpoint_epoch(cwd) < epoch:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, proc.stderr_text = proc.communicate(timeout=60)
    return proc


def curves(cwd: Path) -> dict:
    root = cwd / "dvclive/plots"  # DVCLive's per-metric curves and the three charts
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def final(cwd: Path) -> dict:
    assert ffl(cwd, "evaluate").returncode == 0
    live = json.loads((cwd / "dvclive/metrics.json").read_text())
    return {"test": json.loads((cwd / "metrics/test.json").read_text()), "live": live, "curves": curves(cwd)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("straight")
    write_params(d, params())
    assert ffl(d, "prepare").returncode == 0
    proc = ffl(d, "train")
    assert proc.returncode == 0, proc.stderr
    return final(d)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["KILL", "TERM", "INT"])
def test_killed_training_resumes_to_the_same_result(tmp_path, uninterrupted, sig):
    write_params(tmp_path, params())
    assert ffl(tmp_path, "prepare").returncode == 0
    proc = kill_after(tmp_path, sig, epoch=2)
    assert proc.returncode != 0
    if sig != signal.SIGKILL:
        assert "run the same command again to resume" in proc.stderr_text
        assert "Traceback" not in proc.stderr_text
    stopped_at = checkpoint_epoch(tmp_path)
    assert 2 <= stopped_at < EPOCHS
    resumed = ffl(tmp_path, "train")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoints/last.pt at epoch {stopped_at + 1}/" in resumed.stdout
    result = final(tmp_path)
    assert result["test"] == uninterrupted["test"]  # bit for bit
    assert result["live"] == uninterrupted["live"]
    assert result["curves"] == uninterrupted["curves"]  # no epoch lost or logged twice


def test_a_second_training_in_the_same_directory_is_refused(tmp_path):
    from filelock import FileLock

    write_params(tmp_path, params())
    assert ffl(tmp_path, "prepare").returncode == 0
    (tmp_path / "checkpoints").mkdir()
    with FileLock(str(tmp_path / "checkpoints/.lock")):
        proc = ffl(tmp_path, "train")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: checkpoints: another training is running in this directory"
    assert not (tmp_path / "dvclive").exists() and not (tmp_path / "models").exists()
