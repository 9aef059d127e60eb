"""The `ffl` commands end to end on tiny params, and how they fail."""

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from ffl.artifact import load_model
from pipeline.cli import app
from tests.helpers import tiny_params, write_params

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    return tmp_path


def ffl(*args):
    return runner.invoke(app, list(args))


def snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_prepare_train_evaluate(workdir):
    assert ffl("prepare").exit_code == 0
    assert (workdir / "data/prepared/arrays.npz").exists()
    result = ffl("train")
    assert result.exit_code == 0, result.output
    assert not (workdir / "checkpoints/last.pt").exists()  # a finished run leaves no checkpoint behind
    result = ffl("evaluate")
    assert result.exit_code == 0, result.output
    metrics = json.loads((workdir / "metrics/test.json").read_text())
    data = metrics.pop("data")
    assert data == {"train_images": 120, "protocol_paper": 0}  # 160 shapes less the 25% validation split
    top1, top5 = metrics["test"]["top1_err"], metrics["test"]["top5_err"]
    assert set(top1) == set(top5) == {"sub0", "sub1", "ensemble", "fused", "sub_mean"}
    assert all(0 <= top1[k] <= 100 and top5[k] <= top1[k] for k in top1)
    # The curves use the same names as the test metrics: val/top1_err/<classifier>.
    live = json.loads((workdir / "dvclive/metrics.json").read_text())
    assert live["step"] == 1 and {"sub0", "sub1", "ensemble", "fused"} == set(live["val"]["top1_err"])
    assert {"ce_fused", "ekd", "fkd_sub0", "fkd_sub1", "total"} <= set(live["train"]["loss"])
    assert "time" not in live  # wall-clock time would change dvc.lock on every run
    # The charts dvc.yaml declares: every classifier (train and validation) in one, epochs from 1.
    points = json.loads((workdir / "dvclive/plots/custom/top1_err.json").read_text())
    assert {(p["series"], p["split"]) for p in points} == {
        (c, s) for c in ("sub0", "sub1", "ensemble", "fused") for s in ("train", "val")
    }
    assert sorted({p["epoch"] for p in points}) == [1, 2]
    lr = json.loads((workdir / "dvclive/plots/custom/lr.json").read_text())
    assert [p["value"] for p in lr] == pytest.approx([0.1, 0.01])
    # The fused classifier's test predictions, for DVC's confusion template; they agree with its error.
    confusion = json.loads((workdir / "plots/confusion.json").read_text())
    assert confusion["classifier"] == "fused" and len(confusion["rows"]) == 60
    wrong = sum(r["actual"] != r["predicted"] for r in confusion["rows"])
    assert 100 * wrong / 60 == pytest.approx(top1["fused"], abs=1e-3)
    # The artifact loads with weights_only and reproduces the evaluated numbers.
    raw = torch.load(workdir / "models/model.pt", weights_only=True)
    assert raw["spec"]["method"] == "ffl"
    method, info = load_model(workdir / "models/model.pt")
    assert info["name"] == "shapes" and method.num_subnets == 2


def test_set_overrides_apply_to_the_run(workdir):
    assert ffl("prepare").exit_code == 0
    result = ffl("train", "-S", "method.name=dml", "-S", "model.archs=[resnet8, wrn10_1]", "-S", "train.epochs=1")
    assert result.exit_code == 0, result.output
    method, _ = load_model(workdir / "models/model.pt")
    assert method.spec()["method"] == "dml" and method.spec()["archs"] == ["resnet8", "wrn10_1"]


def test_other_params_file(workdir):
    other = workdir / "other"
    other.mkdir()
    raw = tiny_params()
    raw["data"]["shapes"]["train_per_class"] = 12  # 120 images, 90 after the validation split
    write_params(other, raw)
    result = ffl("prepare", "--params", str(other / "params.yaml"))
    assert result.exit_code == 0 and "train 90," in result.output  # the default file would give 120


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "-S", "method.ffl.temperature=-3"], "error: method.ffl.temperature: Input should be greater than 0"),
        (["train", "-S", "model.archs=[resnet8, nope]"], "error: model.archs.1: unknown architecture 'nope'"),
        (["train", "-S", "train.lrr=1"], "error: train.lrr: unknown key"),
        (["evaluate", "-S", "train.epochs=1.5"], "error: train.epochs: Input should be a valid integer"),
        (["prepare", "-S", "model.archs=[resnet8, resnet18]", "-S", "model.shared=false"], "error: model.archs:"),
    ],
)
def test_bad_params_stop_before_any_work_and_touch_nothing(workdir, args, message):
    assert ffl("prepare").exit_code == 0
    (workdir / "metrics").mkdir()
    (workdir / "metrics/test.json").write_text('{"test": {"top1_err": {"fused": 1.0}}}')
    before = snapshot(workdir)
    result = ffl(*args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()]  # one line
    assert result.output.startswith(message)
    assert snapshot(workdir) == before


def test_missing_prepared_data_and_missing_model(workdir):
    result = ffl("train")
    assert result.exit_code == 2 and "no prepared dataset" in result.output
    result = ffl("evaluate")
    assert result.exit_code == 2 and "models/model.pt: no such file" in result.output


def test_missing_cifar_names_the_root(workdir):
    result = ffl("prepare", "-S", "data.source=cifar10", "-S", "data.root=nowhere")
    assert result.exit_code == 2
    assert result.output.startswith("error: data.root: cifar10 not found under nowhere: expected cifar-10-batches-py/")
    assert "cifar-10-batches-bin/ (the binary version)" in result.output
    assert not (workdir / "data").exists()


def test_corrupted_cifar_is_refused_at_the_door(workdir, monkeypatch):
    from tests.cifar_archive import trust_written_archive, write_cifar

    trust_written_archive(monkeypatch, "cifar10", write_cifar(workdir / "raw", "cifar10"))
    batch = workdir / "raw/cifar-10-batches-py/test_batch"
    batch.write_bytes(batch.read_bytes()[:-10])  # truncated: the md5 no longer matches
    before = snapshot(workdir)
    result = ffl("prepare", "-S", "data.source=cifar10", "-S", "data.root=raw")
    assert result.exit_code == 2
    assert result.output.startswith(
        "error: data.root: cifar10 (python version) under raw: cifar-10-batches-py/test_batch"
    )
    assert "replace it from cifar-10-python.tar.gz (or set data.download: true)" in result.output
    assert snapshot(workdir) == before
    # The same archive, intact, prepares.
    trust_written_archive(monkeypatch, "cifar10", write_cifar(workdir / "raw", "cifar10"))
    assert ffl("prepare", "-S", "data.source=cifar10", "-S", "data.root=raw").exit_code == 0


def test_image_folder_dataset_end_to_end(workdir):
    from tests.imagenet_archive import write_imagefolder

    write_imagefolder(workdir / "raw", classes=("cat", "dog", "owl"), per_class={"train": 12, "val": 4})
    files = ["-S", "data.source=imagefolder", "-S", "data.root=raw", "-S", "data.files.image_size=32"]
    files += ["-S", "data.files.resize=36", "-S", "data.files.workers=1"]
    assert ffl("prepare").exit_code == 0  # the embedded dataset first: its arrays make way for the index
    assert ffl("prepare", *files).exit_code == 0
    assert (workdir / "data/prepared/files.npz").exists() and not (workdir / "data/prepared/arrays.npz").exists()
    result = ffl("train", *files, "-S", "train.batch_size=8", "-S", "train.epochs=1")
    assert result.exit_code == 0, result.output
    result = ffl("evaluate", *files)
    assert result.exit_code == 0, result.output
    metrics = json.loads((workdir / "metrics/test.json").read_text())
    assert {"sub0", "sub1", "ensemble", "fused"} <= set(metrics["test"]["top1_err"])
    _, info = load_model(workdir / "models/model.pt")
    assert info["name"] == "imagefolder" and info["classes"] == ["cat", "dog", "owl"]
    # The index points at the images; moved images are named before any work starts.
    (workdir / "raw").rename(workdir / "moved")
    before = snapshot(workdir)
    result = ffl("train", *files, "-S", "train.batch_size=8", "-S", "train.epochs=2")
    assert result.exit_code == 2 and "indexes images under" in result.output and "raw" in result.output
    assert snapshot(workdir) == before


def test_missing_imagenet_names_the_archives_and_writes_nothing(workdir):
    before = snapshot(workdir)
    result = ffl("prepare", "-S", "data.source=imagenet", "-S", "data.root=nowhere")
    assert result.exit_code == 2
    assert result.output.startswith("error: data.root: imagenet not found or corrupted under nowhere")
    assert "ILSVRC2012_devkit_t12.tar.gz" in result.output and len(result.output.strip().splitlines()) == 1
    assert snapshot(workdir) == before and not (workdir / "nowhere").exists()


def test_a_real_process_fails_with_one_line_and_no_traceback(workdir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", "-S", "method.name=resnet"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: method.name: Input should be 'ffl'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_times_the_project_against_the_reference_in_one_run(tmp_path):
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--arch", "resnet8", "--num-classes", "10", "--batch-size", "16"]
    result = ffl("bench", *args, "--steps", "2", "--warmup", "1", "--ref-workers", "0", "--json", str(out))
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["sections"]["step"]
    assert [r[0] for r in rows] == ["reference", "project"]
    ref, project = float(rows[0][1]), float(rows[1][1])  # images/s as printed, rounded to integers
    rounding = 0.5 / ref + 0.5 / project  # what the rounding alone can move the ratio by (relative)
    assert float(rows[1][3].removesuffix("x")) == pytest.approx(project / ref, rel=0.01 + rounding)
    assert "Projected 300-epoch run" in result.output


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["-S", "data.source=cifar100"], "data.source: shapes -> cifar100"),
        (["-S", "data.shapes.noise=0.2"], "data.shapes.noise: 0.1 -> 0.2"),
        (["-S", "data.protocol=paper"], "data.val_fraction: 0.25 -> 0.0"),
    ],
)
def test_training_refuses_prepared_data_of_other_params(workdir, change, named):
    """A failed `ffl prepare` of another dataset must not train on what is still in data/prepared."""
    assert ffl("prepare").exit_code == 0
    before = snapshot(workdir)
    result = ffl("train", *change)
    assert result.exit_code == 2
    # The hint repeats the -S given: a plain `ffl prepare` would prepare the default params again.
    hint = f"run `ffl prepare {' '.join(change)}` (`dvc repro` runs it)"
    assert result.output.strip() == f"error: data/prepared: made with other data params ({named}); {hint}"
    assert snapshot(workdir) == before
    (workdir / "other.yaml").write_text((workdir / "params.yaml").read_text())
    result = ffl("train", "-p", "other.yaml", *change)
    assert f"run `ffl prepare -p other.yaml {' '.join(change)}`" in result.output


def test_evaluation_refuses_a_model_of_other_data(workdir):
    assert ffl("prepare").exit_code == 0 and ffl("train", "-S", "train.epochs=1").exit_code == 0
    assert ffl("evaluate").exit_code == 0
    # Data prepared again with another seed: the model was trained on other images.
    assert ffl("prepare", "-S", "data.seed=1").exit_code == 0
    before = snapshot(workdir)
    result = ffl("evaluate", "-S", "data.seed=1")
    assert result.exit_code == 2
    assert result.output.startswith("error: models/model.pt: made with other data params (data.seed: 0 -> 1)")
    assert snapshot(workdir) == before  # metrics/test.json of the earlier evaluation kept


def test_a_killed_prepare_leaves_no_dataset_described_by_the_previous_one(workdir, monkeypatch):
    import numpy as np

    assert ffl("prepare").exit_code == 0

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", killed)  # dies while writing the new arrays
    assert ffl("prepare", "-S", "data.seed=1").exit_code == 130
    result = ffl("train", "-S", "data.seed=1")
    assert result.exit_code == 2 and "no prepared dataset" in result.output


def test_plain_log_lines_off_a_terminal(workdir):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = [sys.executable, "-m", "pipeline"]
    assert subprocess.run([*run, "prepare"], cwd=workdir, env=env, capture_output=True).returncode == 0
    proc = subprocess.run([*run, "train"], cwd=workdir, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "val top-1 err sub0 " in lines[0] and " fused " in lines[0] and "lr 0.1 " in lines[0]
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr  # no bar, no escape codes


def test_version_and_every_bench_option_described():
    from importlib.metadata import version

    assert ffl("--version").output.startswith(f"ffl {version('ffl')} (torch ")
    from ffl.bench import parser

    undocumented = [a.dest for a in parser()._actions if not a.help]
    assert not undocumented


def test_dvc_yaml_declares_every_chart_training_writes():
    import yaml

    from pipeline.callbacks import CHARTS
    from tests.helpers import ROOT

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    declared = {next(iter(plot)) for plot in dvc["plots"]}
    assert declared == {f"dvclive/plots/custom/{name}.json" for name in CHARTS}
    assert all(next(iter(plot.values()))["template"] == "series" for plot in dvc["plots"])
    assert (ROOT / ".dvc/plots/series.json").exists()


def test_a_training_split_smaller_than_a_batch_names_the_held_out_fraction(workdir):
    assert ffl("prepare", "-S", "data.val_fraction=0.95").exit_code == 0
    result = ffl("train", "-S", "data.val_fraction=0.95")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: train.batch_size: 32 is larger than the training split "
        "(10 images, after data.val_fraction=0.95 of the training set was held out)"
    )


def test_sigterm_as_a_command_ends_is_an_interrupt_not_a_silent_death(tmp_path):
    """SIGTERM after a command's own handling (its outputs written, the process about to exit):
    one line and exit 130, as everywhere else; it killed the process without a word (-15)."""
    import subprocess
    import sys

    from tests.helpers import FFL_ENV

    script = (
        "import os, signal, sys, time\n"
        "from pipeline import cli\n"
        "@cli.app.command('ending')\n"
        "def ending():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(2)\n"
        "sys.argv = ['ffl', 'ending']\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=FFL_ENV, capture_output=True, text=True)
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert [x for x in proc.stderr.splitlines() if x.strip()] == ["error: interrupted"]
    # Once the command has ended, while the interpreter shuts down: its own exit code, not -15.
    script = (
        "import signal, sys\n"
        "from pipeline import cli\n"
        "sys.argv = ['ffl', 'methods']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit as e:\n"
        "    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, signal.getsignal(signal.SIGTERM)\n"
        "    raise\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=FFL_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
