"""One run over several processes (DDP on gloo, CPU processes): the ranks split every batch, two
processes train the one-process model, and a run that loses a process resumes where it would have ended."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from ffl.artifact import load_model
from ffl.data.arrays import Split
from ffl.data.file_loader import FileLoader, FileSettings
from ffl.data.files import FileSplit
from ffl.data.loader import Augment, DeviceLoader
from ffl.distributed import Ranks, per_rank_batch_norm, shard, usable_batches
from pipeline.dataset import load_prepared
from pipeline.params import load_params
from pipeline.run import build_trainer
from tests.helpers import tiny_params, write_params

pytestmark = pytest.mark.slow
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
EPOCHS = 4


def test_shards_follow_array_split():
    parts = [shard(10, 17, Ranks(r, 3)) for r in range(3)]
    assert parts == [(10, 13), (13, 15), (15, 17)]
    assert usable_batches(70, 32, drop_last=False, world=8) == 2  # 6 left: fewer than 8 ranks, dropped
    assert usable_batches(70, 32, drop_last=False, world=4) == 3
    assert usable_batches(70, 32, drop_last=True, world=1) == 2


def test_ranks_split_every_device_batch_into_the_one_process_batch():
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 255, (70, 3, 8, 8), dtype=np.uint8), np.arange(70) % 10)
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3, augment=Augment(), shuffle=True, seed=5, lockstep=True)
    one = DeviceLoader(split, 32, **kw)
    two = [DeviceLoader(split, 32, **kw, ranks=Ranks(r, 2)) for r in range(2)]
    one.set_epoch(3), [t.set_epoch(3) for t in two]
    batches = list(zip(one, *two))
    assert len(batches) == len(one) == 3  # the last batch (6 images) kept: 3 per rank
    for (x, y), (x0, y0), (x1, y1) in batches:
        assert len(y0) == len(y1) == len(y) // 2
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    eight = DeviceLoader(split, 32, **kw, ranks=Ranks(7, 8))
    assert len(eight) == 2  # 6 images cannot reach 8 ranks: every rank steps twice


def test_ranks_split_every_image_file_batch_into_the_one_process_batch(tmp_path):
    from PIL import Image

    names = []
    for i in range(10):
        Image.fromarray(np.full((12, 12, 3), 20 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        names.append(f"{i}.png")
    split = FileSplit(np.array(names), np.arange(10) % 3)
    kw = dict(mean=[0.5] * 3, std=[0.25] * 3, train=True, shuffle=True, seed=2, files=FileSettings(8, 8, 0))
    one = FileLoader(split, str(tmp_path), 4, **kw)
    two = [FileLoader(split, str(tmp_path), 4, **kw, ranks=Ranks(r, 2)) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *two, strict=True):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)


# -- whole runs under torchrun -------------------------------------------------------------------


def params(processes: int, epochs: int = EPOCHS) -> dict:
    # channels_last off: oneDNN's channels-last CPU convolutions sum in an order that depends on the
    # batch size (16 per rank, 32 in one process), and this tiny run amplifies rounding (near-constant
    # channels under batch norm): a layout's rounding, not what DDP computes, so it is left out here.
    train = {"epochs": epochs, "batch_size": 32, "device": "cpu", "processes": processes, "channels_last": False}
    raw = tiny_params(train=train)
    raw["data"]["shapes"]["train_per_class"] = 24
    return raw


def ffl(cwd, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=ENV, capture_output=True, text=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    method = load_model(path)[0]
    return {k: v for k, v in method.named_parameters()}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    write_params(d, params(2))
    assert ffl(d, "prepare").returncode == 0
    proc = ffl(d, "train")
    assert proc.returncode == 0, proc.stderr
    return d, proc


def test_two_processes_train_the_one_process_model(tmp_path, monkeypatch):
    """Per-rank batch B/2 on two processes = batch B on one, each batch-norm layer given the
    halves' statistics (the only thing DDP computes per rank): two epochs of one step each, with a
    validation pass between them. Tolerance 1e-5 (measured: 6e-8, the all-reduce sums in another
    order). Longer runs of this tiny network amplify rounding (1e-7 added to every initial weight
    moves the weights by 3e-2 after 5 steps at lr 0.1), so they would test that, not DDP."""
    d = tmp_path
    raw = params(2, epochs=2)
    raw["data"]["shapes"]["train_per_class"] = 8  # 60 training images: one step of 32 per epoch
    write_params(d, raw)
    assert ffl(d, "prepare").returncode == 0
    proc = ffl(d, "train")
    assert proc.returncode == 0, proc.stderr
    monkeypatch.chdir(d)
    p = load_params(d / "params.yaml", ["train.processes=1"])
    data = load_prepared(p)
    trainer = build_trainer(p, data, torch.device("cpu"))
    untrained = {k: v.detach().clone() for k, v in trainer.method.named_parameters()}
    per_rank_batch_norm(trainer.method, 2)
    # Each rank computes with its share of the cores (pipeline/launch.py); CPU convolutions sum in
    # another order with another number of threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    try:
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    reference = dict(trainer.method.named_parameters())
    ddp = weights(d / "models/model.pt")
    assert ddp.keys() == reference.keys()
    for name, w in ddp.items():
        torch.testing.assert_close(w, reference[name].detach(), atol=1e-5, rtol=0, msg=f"{name} differs")
    assert max((ddp[k] - v).abs().max().item() for k, v in untrained.items()) > 0.01  # it did train


def test_losing_a_process_stops_the_run_and_it_resumes_exactly(two_processes, tmp_path):
    d = tmp_path
    write_params(d, params(2))
    shutil.copytree(two_processes[0] / "data", d / "data")  # the same prepared data
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "train"], cwd=d, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.time() + 120
    while not (d / "checkpoints/last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.02)
    ranks = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children(recursive=True)}
    ranks["1"].send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err.decode()
    assert "training process 1 of 2 was killed by signal 9" in err.decode()
    # the surviving process says its peer went away, in one line
    assert "process 0: another process of the run stopped" in err.decode() and "Traceback" not in err.decode()
    # torchrun's agent's own lines ("Sending process ... closing signal") are not printed
    assert all(x.startswith(("error: ", "epoch ")) for x in err.decode().splitlines()), err.decode()
    assert not ranks["0"].is_running() or ranks["0"].status() == psutil.STATUS_ZOMBIE  # stopped with it
    assert torch.load(d / "checkpoints/last.pt", weights_only=True)["epoch"] < EPOCHS

    again = ffl(d, "train")
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout
    straight = weights(two_processes[0] / "models/model.pt")
    for name, w in weights(d / "models/model.pt").items():
        assert torch.equal(w, straight[name]), name


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "3", "RANK": "0"}, "train.processes: 2, but torchrun started 3 processes"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "torchrun's environment: RANK=5 is not one of WORLD_SIZE=2 processes"),
        ({"WORLD_SIZE": "abc", "RANK": "0"}, "torchrun's environment: WORLD_SIZE, RANK and LOCAL_RANK must be whole"),
    ],
)
def test_processes_must_match_an_outside_torchrun(tmp_path, env, message):
    write_params(tmp_path, params(2))  # refused before the data is read
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "train"], cwd=tmp_path, env=ENV | env, capture_output=True, text=True
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()  # one line, whatever follows the reason in it
    assert line.startswith(f"error: {message}")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints/last.pt").exists() and not (tmp_path / "models").exists()


def test_what_every_process_would_refuse_is_refused_before_they_start(two_processes, tmp_path):
    """An output that cannot be written, a checkpoint no process could resume from, another training
    in the folder: found by `ffl train` itself, in one line, before any process starts."""
    from filelock import FileLock

    write_params(tmp_path, params(2))
    shutil.copytree(two_processes[0] / "data", tmp_path / "data")
    (tmp_path / "models/model.pt").mkdir(parents=True)
    proc = ffl(tmp_path, "train")
    assert proc.returncode == 2, proc.stderr
    assert "models/model.pt: is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "models/model.pt").rmdir()

    checkpoint = tmp_path / "checkpoints/last.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    for content, reason in [
        (b"garbage", "unreadable checkpoint (truncated, corrupted or not ours)"),
        (None, "not a checkpoint of this project (missing format"),
    ]:
        if content is None:
            torch.save({"x": 1}, checkpoint)
        else:
            checkpoint.write_bytes(content)
        proc = ffl(tmp_path, "train")
        assert proc.returncode == 2, proc.stderr
        (line,) = proc.stderr.splitlines()  # not one per process and the launcher's
        assert line.startswith(f"error: checkpoints/last.pt: {reason}") and line.endswith("--fresh to start over")
        assert not (tmp_path / "dvclive").exists() and not (tmp_path / "models/model.pt").exists()
    checkpoint.unlink()

    with FileLock(str(tmp_path / "checkpoints/.lock")):  # a training running in this folder
        proc = ffl(tmp_path, "train")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: checkpoints: another training is running in this directory"]


@pytest.mark.parametrize(
    ("exits", "named"),
    [
        ({0: 3, 1: 1}, (1, 1)),  # rank 0 saw its peer go (exit 3) in the same poll: rank 1 is named
        ({0: 1, 1: 1}, (0, 1)),
        ({0: -15, 1: 1}, (1, 1)),  # rank 0 stopped by the launcher while it was ending
        ({0: 130, 1: -9}, (1, -9)),  # rank 0 stopped by the launcher mid-epoch
        ({0: 3, 1: 130}, (1, 130)),  # rank 1 interrupted, rank 0 saw it go: an interrupt
        ({0: 3, 1: 3}, (0, 3)),  # only peers' exits: the lowest rank
    ],
)
def test_the_launcher_names_the_process_that_failed_on_its_own(exits, named):
    from pipeline.errors import PeerStopped
    from pipeline.launch import first_failure

    assert PeerStopped.EXIT_CODE == 3
    assert first_failure(exits) == named


@pytest.mark.parametrize(
    ("exits", "named"),
    [
        ({0: 3}, (1, 1)),  # rank 1, still ending, was not in the poll that caught rank 0
        ({0: -6}, (1, 1)),  # rank 0 saw rank 1 go, then aborted in its teardown: its record says why
        ({0: -6, 1: 1}, (1, 1)),  # the same, both caught in one poll (torchrun would name rank 0)
        ({0: 3, 1: -9}, (1, 1)),  # rank 1 killed while it was leaving with its own failure
    ],
)
def test_what_the_ranks_recorded_names_the_process_whatever_torchrun_saw(exits, named):
    from pipeline.launch import first_failure

    assert first_failure(exits, recorded={0: 3, 1: 1}) == named


def test_a_process_out_of_memory_ends_every_process_in_one_line_each(two_processes, tmp_path):
    """Rank 1 runs out of memory in the second epoch (injected through a sitecustomize that only
    rank 1 acts on): it says so in one line, the launcher stops rank 0 and names rank 1, no
    traceback; the same command then resumes to the model of a run never stopped. Rank 1 frees what
    it can, then takes 3 s to exit: rank 0 may see it go and leave first (or abort in its teardown),
    the order in which this test once failed; the naming in every order is pinned just above."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import atexit, time\n"
        "    import gc\n"
        "    atexit.register(lambda: (gc.collect(), time.sleep(3)))\n"
        "    import torch\n"
        "    calls = []\n"
        "    backward = torch.Tensor.backward\n"
        "    def oom(self, *a, **k):\n"
        "        if os.path.exists('checkpoints/last.pt'):  # after the first epoch's checkpoint\n"
        "            calls.append(1)\n"
        "        if len(calls) == 1:\n"
        "            raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')\n"
        "        return backward(self, *a, **k)\n"
        "    torch.Tensor.backward = oom\n"
    )
    d = tmp_path / "run"
    d.mkdir()
    write_params(d, params(2))
    shutil.copytree(two_processes[0] / "data", d / "data")
    env = ENV | {"PYTHONPATH": os.pathsep.join([str(inject), ENV["PYTHONPATH"]])}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "train"], cwd=d, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert "error: out of memory: lower the batch size" in proc.stderr, proc.stderr
    assert any("training process 1 of 2 exited with 1, and the others were stopped" in x for x in lines), lines
    assert "Traceback" not in proc.stderr and not (d / "models/model.pt").exists()
    # The same command, the memory there again, resumes from the last finished epoch, exactly.
    stopped_at = torch.load(d / "checkpoints/last.pt", weights_only=True)["epoch"]
    assert 1 <= stopped_at < EPOCHS
    again = ffl(d, "train")
    assert again.returncode == 0, again.stderr
    assert f"resuming from checkpoints/last.pt at epoch {stopped_at + 1}/" in again.stdout
    straight = weights(two_processes[0] / "models/model.pt")
    for name, w in weights(d / "models/model.pt").items():
        assert torch.equal(w, straight[name]), name
