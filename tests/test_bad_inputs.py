"""Bad inputs end with one clear line and a non-zero exit, and leave every earlier output as it was."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ffl.callbacks import Callback
from ffl.data import Augment, DeviceLoader, make_shapes
from ffl.engine import NonFiniteLoss, TrainConfig, Trainer
from ffl.methods import Vanilla
from pipeline import paths
from pipeline.cli import app
from pipeline.dataset import load_prepared
from pipeline.params import load_params
from pipeline.run import build_trainer
from tests.helpers import tiny_params, write_params

runner = CliRunner()


def ffl(*args):
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output.strip()


def snapshot(root):
    """Every output file; the training lock file is not an output (and is never removed: see filelock)."""
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params())
    assert ffl("prepare")[0] == 0
    return tmp_path


def interrupted_checkpoint(workdir):
    """The checkpoint an interrupted run of the current params leaves after its first epoch."""
    params = load_params("params.yaml")
    trainer = build_trainer(params, load_prepared(params), torch.device("cpu"), [KilledAfterEpoch()], paths.CHECKPOINT)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    return paths.CHECKPOINT


class KilledAfterEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, metrics):
        raise KeyboardInterrupt  # after the epoch's checkpoint, as a kill would be


def assert_refused(args, code, expected, root):
    before = snapshot(root)
    exit_code, output = ffl(*args)
    assert exit_code == code, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in output, output
    assert snapshot(root) == before


def test_malformed_yaml(workdir):
    (workdir / "params.yaml").write_text("train:\n  epochs: 2\n lr: 0.1\n")
    assert_refused(["train"], 2, "params.yaml: malformed YAML at line 3", workdir)


@pytest.mark.parametrize("key", ["colour=1", "train.colour=1", "method.ffl.ekd.colour=1", "data.shapes.colour=1"])
def test_unknown_keys_at_every_level(workdir, key):
    assert_refused(["train", "-S", key], 2, f"error: {key.split('=')[0]}: unknown key", workdir)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (".=1", "error: .: a dotted key has a word between every two dots"),
        ("train..lr=1", "error: train..lr: a dotted key has a word between every two dots"),
        ("train.lr=" + "[" * 5000 + "]" * 5000, "error: train.lr: the value is nested deeper than 32 levels"),
        ("tune.space=" + "{a: " * 40 + "1" + "}" * 40, "error: tune.space: the value is nested deeper than 32 levels"),
    ],
)
def test_keys_with_empty_parts_and_values_nested_absurdly_deep_are_named(workdir, override, expected):
    assert_refused(["train", "-S", override], 2, expected, workdir)


@pytest.mark.parametrize(
    "override",
    ["method.ffl.temperature=-1", "train.lr=-0.1", "train.epochs=0", "data.val_fraction=1.2", "train.batch_size=two"],
)
def test_out_of_range_and_wrong_types(workdir, override):
    assert_refused(["train", "-S", override], 2, f"error: {override.split('=')[0]}:", workdir)


def test_a_cuda_graph_asked_for_on_a_cpu(workdir):
    args = ["train", "-S", "train.cuda_graph=true", "-S", "train.device=cpu"]
    assert_refused(args, 2, "error: train.cuda_graph: true needs a CUDA device", workdir)


def test_truncated_checkpoint(workdir):
    ckpt = interrupted_checkpoint(workdir)
    ckpt.write_bytes(ckpt.read_bytes()[:2000])
    assert_refused(["train"], 2, "checkpoints/last.pt: unreadable checkpoint", workdir)


def test_foreign_checkpoint(workdir):
    (workdir / "checkpoints").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1)}, "epoch": 3}, paths.CHECKPOINT)
    assert_refused(["train"], 2, "checkpoints/last.pt: not a checkpoint of this project (missing format", workdir)


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_checkpoint_cannot_run_code(workdir):
    (workdir / "checkpoints").mkdir()
    with open(paths.CHECKPOINT, "wb") as f:
        pickle.dump({"format": Payload()}, f)
    assert_refused(["train"], 2, "it holds Python objects other than tensors and plain data", workdir)
    # ... and never torch's advice to load it with weights_only=False.
    assert "weights_only" not in ffl("train")[1]


def test_checkpoint_of_another_configuration(workdir):
    interrupted_checkpoint(workdir)
    assert_refused(
        ["train", "-S", "train.lr=0.05"],
        2,
        "checkpoint of another configuration (train.lr: 0.1 -> 0.05); delete it",
        workdir,
    )
    # --fresh is the documented way out.
    assert ffl("train", "-S", "train.lr=0.05", "--fresh")[0] == 0


def test_an_interrupted_run_resumes_with_the_cuda_graph_switched_off(workdir):
    # The graph replays the eager step exactly, so switching it is not another configuration.
    interrupted_checkpoint(workdir)
    code, output = ffl("train", "-S", "train.cuda_graph=false")
    assert code == 0, output
    assert "resum" in output.lower()


def test_corrupted_prepared_dataset(workdir):
    arrays = workdir / "data/prepared/arrays.npz"
    arrays.write_bytes(arrays.read_bytes()[:5000])
    assert_refused(["train"], 2, "data/prepared: prepared dataset is unreadable", workdir)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        # numpy would allocate what the header says before reading: 112 TiB, "out of memory"
        ("(40000000000, 3, 32, 32)", "train_images: its header declares (40000000000, 3, 32, 32) uint8"),
        ("(4, 3, 32, 31)", "train_images: its header declares (4, 3, 32, 31) uint8 (11,904 bytes), the archive "
         "holds 12,288"),
    ],
)  # fmt: skip
def test_a_prepared_array_whose_header_declares_another_size_is_refused_before_it_is_read(workdir, shape, message):
    import zipfile

    import numpy as np

    arrays = workdir / "data/prepared/arrays.npz"
    with np.load(arrays) as z:
        content = {k: z[k][:4] if k == "train_images" else z[k] for k in z.files}
    content["train_labels"] = content["train_labels"][:4]
    np.savez(arrays, **content)
    with zipfile.ZipFile(arrays) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = members["train_images.npy"][:128]
    changed = header.replace(b"(4, 3, 32, 32), }", f"{shape}, }}".encode())
    changed = changed[:127].ljust(127, b" ") if len(changed) > 128 else changed[:-1].ljust(127, b" ")
    members["train_images.npy"] = changed + b"\n" + members["train_images.npy"][128:]
    with zipfile.ZipFile(arrays, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert_refused(["train"], 2, ("error: data/prepared: prepared dataset is unreadable (", message), workdir)


def test_unwritable_output_directory(workdir):
    (workdir / "models").write_text("a file where the models directory should be")
    assert_refused(["train"], 2, "models: cannot create output directory", workdir)


class Exploding(Vanilla):
    """CE until epoch 1, then an infinite term: what a diverging run looks like to the engine."""

    def loss(self, outputs, targets, epoch):
        terms = super().loss(outputs, targets, epoch)
        if epoch >= 1:
            terms["boom"] = terms["ce_sub0"] * float("inf")
        return terms


def test_non_finite_loss_stops_with_epoch_and_term_keeping_the_last_good_checkpoint(tmp_path):
    data = make_shapes(train_per_class=8, test_per_class=2, val_fraction=0.25)
    loader = DeviceLoader(data.splits["train"], 16, data.mean, data.std, augment=Augment(), drop_last=True)
    ckpt = tmp_path / "last.pt"
    trainer = Trainer(Exploding(["resnet8"], 10), loader, TrainConfig(epochs=3, milestones=[]), checkpoint_path=ckpt)
    with pytest.raises(NonFiniteLoss) as e:
        trainer.fit()
    assert e.value.epoch == 1 and e.value.term == "boom"
    assert e.value.step == 0
    assert "loss term 'boom' became non-finite at step 0 of epoch 1" in str(e.value)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # epoch 0's checkpoint, whole


def test_diverging_run_exits_1_naming_the_epoch(workdir):
    exit_code, output = ffl("train", "-S", "train.lr=1e30", "-S", "train.momentum=0.99")
    assert exit_code == 1 and "became non-finite at step" in output and "of epoch 0" in output


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BOMB, "expands to more than 100000 values (YAML aliases?)"),  # 10^9 values once expanded
        ("a: &a [1, *a]\n", "expands to more than 100000 values"),  # a cycle
        ("x: " + "[" * 5000 + "]" * 5000 + "\n", "params.yaml: "),  # deep nesting: no RecursionError
        ("x: 1\n" + "#" * (1 << 20), "bytes; a params file is at most 1048576"),
    ],
)
def test_params_files_that_are_no_params_files(workdir, text, message):
    (workdir / "params.yaml").write_text(text)
    before = snapshot(workdir)
    code, out = ffl("train")
    assert code == 2 and out.startswith("error: params.yaml: ") and message in out and "\n" not in out
    assert snapshot(workdir) == before


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_a_device_or_pipe_as_params_ends_at_once(workdir, path):
    import os

    if path == "fifo":
        os.mkfifo(workdir / "fifo")  # nobody writes to it: reading it would block forever
    code, out = ffl("train", "-p", path)
    assert code == 2 and out == f"error: {path}: not a regular file"


@pytest.mark.parametrize(
    ("drop", "key"),
    [
        ((), "seed"),  # an empty file: nothing is filled in from defaults the file does not show
        (("train",), "train"),
        (("train", "epochs"), "train.epochs"),
        (("method", "ffl", "ekd", "weight"), "method.ffl.ekd.weight"),
        (("method", "ffl"), "method.ffl"),
    ],
)
def test_a_params_file_missing_a_key_is_refused_not_filled_in(workdir, drop, key):
    raw = tiny_params()
    if drop:
        node = raw
        for part in drop[:-1]:
            node = node[part]
        del node[drop[-1]]
    else:
        raw = {}
    write_params(workdir, raw)
    assert_refused(["train"], 2, f"error: {key}: ", workdir)
    assert "params.yaml lists every key" in ffl("train")[1]


def test_the_other_methods_sections_may_be_left_out(workdir):
    raw = tiny_params()
    raw["method"] = {"name": "dml", "dml": raw["method"]["dml"]}
    write_params(workdir, raw)
    code, output = ffl("train", "-S", "train.epochs=1")
    assert code == 0, output


def test_a_failed_run_leaves_the_last_model_and_its_curves_together(workdir):
    assert ffl("train")[0] == 0
    finished = {p: p.read_bytes() for p in [paths.MODEL, *paths.DVCLIVE.rglob("*")] if p.is_file()}
    assert paths.DVCLIVE / "metrics.json" in finished
    code, output = ffl("train", "-S", "train.lr=1e30", "-S", "train.momentum=0.99")
    assert code == 1 and "became non-finite" in output
    after = {p: p.read_bytes() for p in [paths.MODEL, *paths.DVCLIVE.rglob("*")] if p.is_file()}
    assert after == finished


def test_a_setting_that_cannot_change_the_result_does_not_block_a_resume(workdir):
    # Decoding workers change the speed, never the batches (ffl/data/file_loader.py).
    interrupted_checkpoint(workdir)
    code, output = ffl("train", "-S", "data.files.workers=3")
    assert code == 0 and "resuming from checkpoints/last.pt at epoch 2/2 (1 done)" in output, output


def test_temporary_files_of_killed_writers_are_removed(workdir):
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    (workdir / "checkpoints").mkdir()
    stale = workdir / f"checkpoints/.last.pt.tmp-{gone.pid}"
    stale.write_bytes(b"half a checkpoint")
    stale_model = workdir / f"models/.model.pt.tmp-{gone.pid}"
    stale_model.parent.mkdir()
    stale_model.write_bytes(b"half a model")
    running = workdir / "checkpoints/.last.pt.tmp-1"  # pid 1 runs: a writer still at work
    running.write_bytes(b"")
    assert ffl("train")[0] == 0
    assert not stale.exists() and not stale_model.exists() and running.exists()


def test_scratch_directories_go_however_their_block_ends_and_those_of_killed_processes_with_the_next(tmp_path):
    import subprocess
    import tempfile

    from ffl import atomic

    gone = subprocess.Popen(["true"])
    gone.wait()
    prefix = f"ffl-test-{tmp_path.name}-"
    stale = Path(tempfile.mkdtemp(prefix=f"{prefix}{gone.pid}-"))  # left by a killed run
    (stale / "data").mkdir()
    running = Path(tempfile.mkdtemp(prefix=f"{prefix}1-"))  # pid 1 runs: a run still at work
    with pytest.raises(KeyboardInterrupt), atomic.scratch(prefix) as scratch:
        assert scratch.name.startswith(f"{prefix}{os.getpid()}-") and scratch.is_dir()
        assert not stale.exists() and running.is_dir()
        (scratch / "models").mkdir()
        raise KeyboardInterrupt
    assert not scratch.exists() and running.is_dir()
    again = Path(tempfile.mkdtemp(prefix=f"{prefix}{gone.pid}-"))
    atomic.clear_scratch(prefix)  # what the driver of killed runs does
    assert not again.exists() and running.is_dir()
    running.rmdir()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("spec", [1, 2], "not a checkpoint of this project (spec is a list)"),
        ("spec.method", "zzz", "does not fit this version of ffl: unknown method 'zzz'"),
        (
            "spec.archs",
            ["resnet999x", "resnet999x"],
            "does not fit this version of ffl: archs: unknown architecture 'resnet999x'",
        ),
        ("spec.num_classes", "ten", "does not fit this version of ffl"),
        ("spec.settings", [1], "does not fit this version of ffl"),
        ("state_dict", {"w": torch.zeros(1)}, "does not fit this version of ffl"),
        ("dataset", [1], "not a model of this project (dataset is a list)"),
    ],
)
def test_a_model_file_with_fields_of_the_wrong_kind(workdir, field, value, message):
    assert ffl("train")[0] == 0 and ffl("evaluate")[0] == 0
    model = torch.load(paths.MODEL, weights_only=True)
    node, *path = field.split(".")
    if path:
        model[node][path[0]] = value
    else:
        model[node] = value
    torch.save(model, paths.MODEL)
    assert_refused(["evaluate"], 2, f"error: models/model.pt: {message}", workdir)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epoch", "1", "(epoch is a str)"),
        ("epoch", 7, "does not fit this version of ffl: epoch 7 with 1 epochs of history"),
        ("history", [3], "does not fit this version of ffl: its history is not a list of epoch metrics"),
        ("optimizer", {"state": 1}, "does not fit this version of ffl"),
        ("rng", {}, "does not fit this version of ffl"),
    ],
)
def test_a_checkpoint_with_fields_of_the_wrong_kind(workdir, field, value, message):
    ckpt = interrupted_checkpoint(workdir)
    state = torch.load(ckpt, weights_only=True)
    state[field] = value
    torch.save(state, ckpt)
    assert_refused(["train"], 2, message, workdir)


def rewrite_prepared(workdir, meta=None, arrays=None):
    """Changes data/prepared/meta.json (``meta(dict) -> new``) or arrays.npz (``arrays(dict) -> dict``)."""
    import json

    import numpy as np

    d = workdir / "data/prepared"
    if meta:
        (d / "meta.json").write_text(json.dumps(meta(json.loads((d / "meta.json").read_text()))))
    if arrays:
        with np.load(d / "arrays.npz") as z:
            content = dict(z)
        np.savez(d / "arrays.npz", **arrays(content))


@pytest.mark.parametrize(
    ("meta", "arrays", "message"),
    [
        (lambda m: [], None, "meta.json holds a list, not a mapping"),
        (lambda m: m | {"mean": 5}, None, "meta.json: mean is missing or malformed"),
        (lambda m: m | {"mean": ["a", "b", "c"]}, None, "meta.json: mean is missing or malformed"),
        (lambda m: m | {"classes": 3}, None, "meta.json: classes is missing or malformed"),
        (lambda m: m | {"provenance": "x"}, None, "meta.json: provenance is missing or malformed"),
        (lambda m: m | {"classes": m["classes"][:3]}, None, "train labels go beyond the 3 classes of meta.json"),
        (None, lambda a: a | {"train_labels": a["train_labels"] + 50}, "train labels go beyond the 10 classes"),
        (None, lambda a: a | {"val_labels": a["val_labels"] - 20}, "val labels go beyond the 10 classes"),
        (None, lambda a: a | {"train_labels": a["train_labels"][:, None]}, "expected one integer per image"),
        (None, lambda a: {k: v for k, v in a.items() if not k.startswith("test")}, "test split is missing or empty"),
        (None, lambda a: {k: v for k, v in a.items() if not k.startswith("train")}, "train split is missing or empty"),
    ],
)
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_prepared_data_with_malformed_metadata_or_splits(workdir, meta, arrays, message, command):
    if command == "evaluate":
        assert ffl("train")[0] == 0
    rewrite_prepared(workdir, meta, arrays)
    assert_refused([command], 2, ("error: data/prepared: prepared dataset is unreadable (", message), workdir)


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda w: (w / "models/model.pt").mkdir(parents=True), ["train"], "models/model.pt: is a directory"),
        (lambda w: (w / "metrics/test.json").mkdir(parents=True), ["evaluate"], "metrics/test.json: is a directory"),
        (lambda w: (w / "checkpoints/.lock").mkdir(parents=True), ["train"], "checkpoints/.lock: cannot take the"),
        (lambda w: (w / "docs").mkdir(), ["methods", "--write", "docs"], "--write: docs is not a regular file"),
        (None, ["methods", "--write", "/dev/null"], "--write: /dev/null is not a regular file"),
        (None, ["train", "-S", "seed=4294967296"], "seed: Input should be less than 4294967296"),
        (None, ["train", "-S", "train.device=mps"], "train.device: mps is not usable here"),
        (None, ["train", "-S", "data.augment.pad=32"], "data.augment.pad: reflect padding must be smaller than"),
        (None, ["train", "-S", "model.subnets=100000"], "model.subnets: expected auto or a whole number from 1 to 64"),
    ],
)
def test_outputs_that_cannot_be_written_and_settings_that_cannot_run_stop_before_any_work(workdir, make, args, message):
    if "evaluate" in args:
        assert ffl("train")[0] == 0
    if make:
        make(workdir)
    assert_refused(args, 2, message, workdir)


@pytest.mark.parametrize(
    "args",
    [
        ["--batch-size", "-4"],
        ["--arch", "resnet9"],
        ["--device", "gpu0"],
        ["--subnets", "0"],
        ["--steps", "0"],
        ["--json", "/proc/no/such/dir/b.json"],
    ],
)
def test_bench_refuses_bad_arguments_before_timing_anything(args, capsys):
    from ffl.bench import main

    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ffl bench:") and args[0] in err[0]


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (MemoryError(), 1, "error: out of memory: lower the batch size"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"), 1, "out of memory"),
        (OSError(28, "No space left on device", "models/model.pt"), 1, "error: disk full: models/model.pt could"),
        (KeyboardInterrupt(), 130, "error: interrupted; no output is left half-written or mixed"),
    ],
)
def test_a_machine_out_of_memory_or_disk_or_an_interrupt_ends_in_one_line(workdir, monkeypatch, raised, code, line):
    from pipeline.stages import prepare as stage

    def prepare(params):
        raise raised

    monkeypatch.setattr(stage, "prepare", prepare)
    assert_refused(["prepare"], code, line, workdir)


def test_a_search_without_one_scored_trial_keeps_the_last_results(workdir, monkeypatch):
    from pipeline import tune_results
    from pipeline.errors import TrainingFailed

    params = load_params("params.yaml")
    out = workdir / "tune"
    out.mkdir()
    for name in ("trials.csv", "summary.json", "best_params.yaml", "best_overrides.txt"):
        (out / name).write_text(f"the last search's {name}")
    before = snapshot(out)
    rows = [{"trial": i, "status": "failed: loss became non-finite", "score": 100.0} for i in range(2)]
    monkeypatch.setattr(tune_results, "trial_rows", lambda results, p: rows)
    with pytest.raises(TrainingFailed, match="none of the 2 trials finished with a score"):
        tune_results.write_results(None, params, tiny_params(), out=out)
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--bogus"], "error: ffl train: No such option: --bogus (`ffl train --help` lists the options)"),
        (["tune", "--trials", "many"], "error: ffl tune: Invalid value for '--trials'"),
    ],
)
def test_command_line_mistakes_end_in_one_line_too(tmp_path, args, message):
    import subprocess
    import sys

    script = "import sys; sys.argv[0] = 'ffl'; from pipeline.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(message), proc.stderr


def test_a_symlinked_curves_folder_is_replaced_without_litter(workdir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "live"
    elsewhere.mkdir()
    (workdir / "dvclive").symlink_to(elsewhere)
    assert ffl("train")[0] == 0
    assert (workdir / "dvclive/metrics.json").is_file() and not list(workdir.glob(".dvclive.old-*"))
    assert elsewhere.is_dir()  # the link was set aside, not the folder it pointed to


def test_evaluation_writes_its_outputs_with_interrupts_held_off():
    import os
    import signal

    from pipeline.signals import signals_deferred

    written = []
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between two of the files
        written.append("confusion")
        written.append("metrics")
    assert written == ["confusion", "metrics"]  # both, then the interrupt


@pytest.mark.parametrize("change", ["model.arch=resnet14", "method.name=dml", "method.ffl.temperature=4"])
def test_evaluation_refuses_a_model_the_params_do_not_describe(workdir, change):
    assert ffl("train")[0] == 0 and ffl("evaluate")[0] == 0
    assert_refused(["evaluate", "-S", change], 2, "error: models/model.pt: trained with ", workdir)


def test_training_in_a_git_repository_without_a_commit_says_to_commit_first(workdir):
    """DVCLive reads the git repository it runs in; one with no commit yet made it raise SCMError."""
    import subprocess
    import sys
    from pathlib import Path

    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    dvc = Path(sys.executable).with_name("dvc")
    subprocess.run([str(dvc), "init", "-q"], cwd=workdir, check=True)
    assert_refused(
        ["train"], 2, "error: DVCLive cannot read the git repository here (Empty git repo); commit once", workdir
    )


@pytest.mark.parametrize(
    ("command", "change", "expected"),
    [
        ("train", "train.epochs=1000000000000", "error: train.epochs: Input should be less than or equal to 100000"),
        (
            "train",
            "train.batch_size=10000000",
            "error: train.batch_size: Input should be less than or equal to 1000000",
        ),
        ("tune", "tune.trials=1000000", "error: tune.trials: Input should be less than or equal to 100000"),
        (
            "tune",
            "tune.space.train.epochs={type: int, low: 1, high: 1000000000000}",
            "error: tune.space.train.epochs: 1000000000000 is refused",
        ),
    ],
)
def test_absurd_sizes_are_refused_at_the_door(workdir, command, change, expected):
    assert_refused([command, "-S", change], 2, expected, workdir)


def test_a_disk_that_fills_while_torch_saves_names_the_file(workdir, monkeypatch):
    """torch's serializer says "unexpected pos" on a full disk and names no file: the line names it,
    and the earlier file stays whole (written beside, renamed only once complete)."""

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 1024")

    monkeypatch.setattr(torch, "save", full)
    code, out = ffl("train")
    assert code == 1 and out == (
        "error: disk full: checkpoints/last.pt could not be written; free space and run it again"
    ), out
    assert not list(workdir.glob("checkpoints/.last.pt.tmp-*")) and not (workdir / "checkpoints/last.pt").exists()
    # The run left nothing of itself: no curves of an epoch that no checkpoint holds.
    assert not (workdir / "checkpoints/dvclive").exists() and not (workdir / "dvclive").exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_damaged_after_prepare_is_named_when_an_epoch_meets_it(workdir, workers):
    """Met mid-epoch, in the training process or in a DataLoader worker: one line naming the file."""
    from tests.imagenet_archive import write_imagefolder

    write_imagefolder(workdir / "raw", classes=("cat", "dog"), per_class={"train": 6, "val": 2})
    files = ["-S", "data.source=imagefolder", "-S", "data.root=raw", "-S", "data.files.image_size=32"]
    files += ["-S", "data.files.resize=36", "-S", f"data.files.workers={workers}", "-S", "train.batch_size=4"]
    assert ffl("prepare", *files)[0] == 0
    (workdir / "raw/train/dog/3.jpg").write_bytes(b"")  # emptied, as a failed copy leaves it
    code, out = ffl("train", *files, "-S", "train.epochs=1")
    assert code == 2 and len(out.splitlines()) == 1, out
    assert out.startswith("error: ") and "raw/train/dog/3.jpg: damaged, empty or not an image" in out, out
    assert "replace or remove it, then prepare the data again" in out and "Traceback" not in out


def test_files_that_are_one_result_are_all_old_after_a_full_disk(tmp_path, monkeypatch):
    """evaluate's metrics, confusion and CAM picture: the disk fills at the last of them, and none
    is replaced (each written and synced beside its name before any is renamed)."""
    import errno
    import os

    from ffl import atomic

    files = {tmp_path / "plots/confusion.json": b"new", tmp_path / "plots/cam.png": b"new", tmp_path / "m.json": b"new"}
    for path in files:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"old")
    syncs, fsync = [], os.fsync

    def fills(fd):
        syncs.append(fd)
        if len(syncs) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", fills)
    with pytest.raises(OSError) as e:
        atomic.write_together(files)
    assert e.value.filename == str(tmp_path / "m.json") and e.value.errno == errno.ENOSPC
    assert all(p.read_bytes() == b"old" for p in files)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cam.png", "confusion.json", "m.json", "plots"]
    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_together(files)
    assert all(p.read_bytes() == b"new" for p in files)
