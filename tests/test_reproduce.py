"""The paper's tables as presets: every row trains, `ffl reproduce` runs rows over seeds on Ray and
records each run as a DVC experiment, `ffl report` sets them beside the paper's numbers."""

import json
import re
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline import reproduce as rp
from pipeline import tables as tb
from pipeline.cli import app
from pipeline.params import apply_overrides, validate
from pipeline.run import build_trainer
from tests.helpers import ROOT, TINY_RUN, project_repo, sh, tiny_params

runner = CliRunner()
TABLES = tb.load_tables(ROOT / "configs/tables.yaml")
# The embedded dataset, one short epoch: the row's architecture, method and settings, other data.
TINY = TINY_RUN
SET_TINY = [arg for s in TINY for arg in ("-S", s)]


@pytest.mark.parametrize(("table", "row"), [(t, r) for t, table in TABLES.items() for r in table.rows])
def test_every_preset_row_trains_an_epoch(table, row, monkeypatch):
    monkeypatch.chdir(ROOT)  # the tables name their base files from the project's root
    from ffl.data import make_shapes

    full = validate(tb.row_raw(TABLES[table], row))  # the row as it runs on its own data
    if TABLES[table].rows[row].paper:  # a table of the paper: the authors' protocol and schedule
        assert full.data.protocol == "paper"
        schedule = {"cifar10": 300, "cifar100": 300, "imagenet": 90}
        assert full.train.epochs == schedule[full.data.source], full.data.source
    else:  # a table of our own (cifar10-cpu): one recipe for every row, compared with its vanilla row
        assert "vanilla" in TABLES[table].rows and full.data.source == "cifar10"
    for key in TABLES[table].rows[row].paper:  # every paper number names a classifier the row reports
        clf = key.split(".")[1]
        assert clf in [*full.method_class.outputs(len(full.archs()), full.settings()), "sub_mean"], key
    # 20 images: one step of 16 and the last, smaller batch (the paper's protocol keeps it). At
    # lr 0.1 a batch of 16 can throw a 110-layer net off in a few steps; the wiring is what is tested.
    data = make_shapes(2, 2, 0.0, 0.1, 0)
    params = validate(tb.row_raw(TABLES[table], row, [*TINY, "train.lr=0.01"]))
    trainer = build_trainer(params, data, torch.device("cpu"))
    history = trainer.fit()
    assert len(history) == 1 and all(torch.isfinite(torch.tensor(v)) for v in history[0].values())


def test_the_ablation_rows_switch_what_docs_paper_md_says():
    s = {r: validate(tb.row_raw(TABLES["cifar100-ablation"], r)).settings() for r in "ABCD"}
    on = {r: (x.fusion.enabled, x.ekd.enabled, x.fkd.enabled) for r, x in s.items()}
    assert on == {"A": (1, 1, 1), "B": (0, 0, 1), "C": (1, 0, 1), "D": (1, 1, 0)}


def test_a_dry_run_takes_each_methods_measured_step_and_scales_the_rest(monkeypatch):
    monkeypatch.chdir(ROOT)
    measured = yaml.safe_load((ROOT / "configs/gpu_throughput.yaml").read_text())["images_per_s"]
    result = runner.invoke(app, ["reproduce", "cifar100-dualnet", "--dry-run", "--seeds", "0", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("cifar100-dualnet-") for line in lines) == 16

    def line(name):
        return next(x for x in lines if x.startswith(name))

    def hours(name):
        return float(line(name).split("~")[1].split()[0])

    # Measured: 300 epochs x 50,000 images at the method's own figure, each method its own.
    for method in ("ffl", "dualnet"):
        name = f"cifar100-dualnet-resnet32-{method}-s0"
        assert f"~{300 * 50_000 / measured[method]['resnet32'] / 3600:.2f} GPU h (measured)" in line(name)
    # Another depth: the method's own figure scaled by FLOPs.
    assert "(scaled from dualnet resnet32)" in line("cifar100-dualnet-resnet56-dualnet-s0")
    assert hours("cifar100-dualnet-resnet56-ffl-s0") > 1.6 * hours("cifar100-dualnet-resnet32-ffl-s0")
    assert "from each method's step measured by ffl bench on an NVIDIA H200" in result.output


def test_a_dry_run_says_when_a_tables_data_is_not_there(monkeypatch):
    monkeypatch.chdir(ROOT)
    result = runner.invoke(app, ["reproduce", "cifar10-ffl", "--dry-run", "--seeds", "0", "-S", "data.root=nowhere"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("data missing (cifar10 at nowhere): cifar10 not found under nowhere: expected ")
    assert "cifar-10-batches-py/" in first and "cifar-10-batches-bin/" in first
    shapes = runner.invoke(app, ["reproduce", "cifar100-ablation", "--dry-run", "--seeds", "0", *SET_TINY])
    assert "data missing" not in shapes.output


def test_unknown_tables_and_rows_are_named(monkeypatch):
    monkeypatch.chdir(ROOT)
    code = runner.invoke(app, ["reproduce", "cifar1000", "--dry-run"])
    assert (
        code.exit_code == 2
        and "no table 'cifar1000' in configs/tables.yaml; its tables are cifar100-dualnet" in code.output
    )
    code = runner.invoke(app, ["reproduce", "cifar100-ablation", "--rows", "E", "--dry-run"])
    assert code.exit_code == 2 and "--rows: cifar100-ablation has no row 'E'; its rows are A, B, C, D" in code.output


def test_a_run_goes_through_dvc_yamls_stages_in_its_order():
    from pipeline.stages.sequence import STAGES

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(STAGES) == list(stages)
    assert [stages[name]["cmd"] for name in STAGES] == [f"ffl {name}" for name in STAGES]


def test_two_spellings_of_the_same_params_are_the_same_run_everywhere(tmp_path, monkeypatch):
    """Key order, an int for a float and a default written out: the same run for the report, for
    what reproduce counts as recorded, and for a resumed training's checkpoint."""
    from pipeline import report
    from pipeline.experiments import sort_out
    from pipeline.run import run_config, run_identity

    monkeypatch.chdir(ROOT)
    table = TABLES["cifar10-cpu"]
    (run,) = tb.plan(TABLES, "cifar10-cpu", ["ffl"], [1])
    other = dict(reversed(list(run.raw.items())))  # every section in the other order
    other["train"] = dict(reversed(list(run.raw["train"].items())))
    other["method"] = dict(run.raw["method"], ffl=dict(run.raw["method"]["ffl"], temperature=3))  # 3 for 3.0
    assert run.raw["method"]["ffl"]["temperature"] == 3.0 and isinstance(run.raw["method"]["ffl"]["temperature"], float)
    other["model"] = dict(run.raw["model"], subnets=2)  # `auto`, written out for FFL
    assert run.raw["model"]["subnets"] == "auto" and other != run.raw
    assert run_identity(other) == run_identity(run.raw) is not None
    # reproduce: recorded already, whatever the spelling
    todo, skipped = sort_out([run], {"recorded-as-other": run_identity(other)})
    assert todo == [] and skipped == {run.name: "recorded-as-other"}
    # report: the experiment is the row's run
    runs = [{"name": "x", "params": other, "metrics": {"test": {"top1_err": {"fused": 20.0, "sub_mean": 21.0}}}}]
    entry = next(e for e in report.summarise(table, runs) if e["row"] == "ffl" and e["deployed"])
    assert entry["runs"] == ["x"] and entry["mean"] == 20.0
    # a resumed training: the checkpoint's config is the same
    from ffl.config_diff import differences

    assert not differences(run_config(validate(other)), run_config(validate(run.raw)))
    other["train"]["epochs"] = 6
    assert run_identity(other) != run_identity(run.raw)  # and a real difference is one


def test_repeated_seeds_and_rows_are_one_run_each_and_said_so(monkeypatch):
    monkeypatch.chdir(ROOT)
    args = [
        "reproduce",
        "cifar10-cpu",
        "--rows",
        "ffl",
        "--rows",
        "dml",
        "--rows",
        "ffl",
        "--seeds",
        "0",
        "--seeds",
        "1",
    ]
    result = runner.invoke(app, [*args, "--seeds", "0", "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:2] == ["--rows: ffl given more than once; taken once", "--seeds: 0 given more than once; taken once"]
    runs = [x.split()[0] for x in lines if x.startswith("cifar10-cpu-")]  # (a line before: the data, where absent)
    assert sorted(runs) == sorted(f"cifar10-cpu-{r}-s{s}" for r in ("ffl", "dml") for s in (0, 1))
    assert lines[-1].startswith("4 runs,")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no tables (an empty file?); configs/tables.yaml shows the form"),
        ("# nothing but a comment\n", "holds no tables (an empty file?)"),
        ("tiny: [1, 2\n", "malformed YAML at line 2"),
        ("- a list\n", "params must be a mapping of sections, got list"),
    ],
)
def test_an_empty_or_damaged_tables_file_is_named_with_what_is_wrong(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(ROOT)
    (tmp_path / "t.yaml").write_text(text)
    result = runner.invoke(app, ["reproduce", "tiny", "--tables", str(tmp_path / "t.yaml"), "--dry-run"])
    assert result.exit_code == 2 and f"error: {tmp_path / 't.yaml'}: {message}" in result.output, result.output


def test_a_report_is_not_replaced_by_one_made_from_fewer_runs(tmp_path, monkeypatch):
    import shutil

    from pipeline import report

    shutil.copy(ROOT / "params.yaml", tmp_path)
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs/tables.yaml", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    runs = own_table_runs({"vanilla": [20.0, 21.0, 22.0], "ffl": [17.0, 17.5, 18.0]})
    monkeypatch.setattr(report, "experiments", lambda: runs)
    assert runner.invoke(app, ["report", "cifar10-cpu"]).exit_code == 0
    written = {f.relative_to(tmp_path): f.read_bytes() for f in (tmp_path / "reports").rglob("*") if f.is_file()}
    kept = {f"reports/runs/{r['name']}.json" for r in runs}  # the runs it was made from, kept beside it
    assert {str(f) for f in written} == {
        "reports/cifar10-cpu.md",
        "reports/cifar10-cpu.json",
        "reports/cifar10-cpu.png",
        *kept,
    }

    monkeypatch.setattr(report, "experiments", lambda: runs[:4])  # a clone with fewer experiments
    result = runner.invoke(app, ["report", "cifar10-cpu"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == (
        "error: reports/cifar10-cpu.json: made from 6 runs, and this report finds 4 (DVC experiments stay in the "
        "repository that ran them: `dvc exp pull <remote>` brings them here); --force replaces it"
    )
    now = {f.relative_to(tmp_path): f.read_bytes() for f in (tmp_path / "reports").rglob("*") if f.is_file()}
    assert now == written  # nothing written
    assert runner.invoke(app, ["report", "cifar10-cpu", "--force"]).exit_code == 0
    assert "| ffl | fused (deployed) | 17.00 | 1 |" in (tmp_path / "reports/cifar10-cpu.md").read_text()


# -- the whole path: Ray, DVC experiments, the report -------------------------------------------


run = sh


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for the module (never a cluster left running)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def repo(ray_session, tmp_path):
    """A copy of the project as a git + DVC repository of its own: no test sees another's
    experiments or reports."""
    (tmp_path / "repo").mkdir()
    return project_repo(tmp_path / "repo", tiny_params())


def ffl(repo, monkeypatch, *args):
    monkeypatch.chdir(repo)
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def experiments(repo, what="metrics") -> dict[str, dict]:
    """``{name: metrics/test.json's test section, or params.yaml}`` of every experiment at HEAD,
    read from `dvc exp show` itself."""
    out = {}
    for baseline in json.loads(run("dvc exp show --json", repo)):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                out[rev["name"]] = (
                    data["metrics"]["metrics/test.json"]["data"]["test"]
                    if what == "metrics"
                    else data["params"]["params.yaml"]["data"]
                )
    return out


def scratch_directories() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob(f"{rp.SCRATCH}*-*"))


def left_by_killed_runs(before: set[Path]) -> list[Path]:
    """The runs' scratch directories (``ffl-run-<pid>-*``) made since ``before`` and left behind,
    once the processes that made them have ended (a run killed by the driver ends soon after it)."""
    import os
    import time

    def running(d: Path) -> bool:
        try:
            os.kill(int(d.name.removeprefix(rp.SCRATCH).split("-")[0]), 0)
        except ProcessLookupError:
            return False
        return True

    deadline = time.monotonic() + 30
    while any(d.exists() and running(d) for d in scratch_directories() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [d for d in scratch_directories() - before if d.exists()]


@pytest.mark.slow  # a git + DVC repository, runs on Ray
def test_reproduce_records_every_run_continues_and_reports(repo, monkeypatch):
    import ray

    args = ["reproduce", "cifar100-ablation", "--rows", "D", "--seeds", "0", "--seeds", "1", *SET_TINY]
    # Ctrl-C while the first runs are under way: what is recorded stays recorded.
    wait, calls = ray.wait, []

    def interrupted_wait(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return wait(*a, **k)

    monkeypatch.setattr(ray, "wait", interrupted_wait)
    before = scratch_directories()
    code, out = ffl(repo, monkeypatch, *args)
    assert code == 130 and "interrupted; 1 runs recorded, 1 not: the same command continues with those" in out, out
    assert len(experiments(repo)) == 1
    assert not left_by_killed_runs(before)  # the run killed mid-way could not remove its scratch: the driver did
    monkeypatch.setattr(ray, "wait", wait)
    # The same command continues: the recorded run is not run again.
    code, out = ffl(repo, monkeypatch, *args)
    assert code == 0, out
    assert ": recorded already (dvc exp show); skipped" in out and "1 recorded, 1 recorded before" in out
    runs = experiments(repo)
    assert set(runs) == {f"cifar100-ablation-D-s{s}" for s in (0, 1)}
    # Each is a whole experiment: its params are the row's, its model in DVC's cache.
    params = experiments(repo, "params")["cifar100-ablation-D-s1"]
    assert params["seed"] == 1 and params["method"]["ffl"]["fkd"]["enabled"] is False
    assert params["data"]["protocol"] == "paper"
    # ... applied like any experiment: `dvc exp apply` brings the model back from the cache.
    run("dvc exp apply cifar100-ablation-D-s1", repo)
    from ffl.artifact import load_model

    method, info = load_model(Path(repo) / "models/model.pt")
    assert method.name == "ffl" and info["provenance"]["data.source"] == "shapes"
    run("git checkout -- . && git clean -fdq", repo)

    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation", *SET_TINY)
    assert code == 0 and "no runs yet: A, B, C" in out, out
    report = json.loads((repo / "reports/cifar100-ablation.json").read_text())["rows"]
    for entry in report:
        if entry["row"] in "ABC":
            assert entry["mean"] is None and entry["seeds"] == []
            continue
        values = [runs[f"cifar100-ablation-{entry['row']}-s{s}"] for s in (0, 1)]
        clf = entry["metric"].split(".")[1]
        ours = [v["top1_err"][clf] for v in values]
        assert entry["seeds"] == [0, 1]
        assert entry["mean"] == pytest.approx(statistics.fmean(ours))
        assert entry["std"] == pytest.approx(statistics.stdev(ours))
        assert entry["difference"] == pytest.approx(statistics.fmean(ours) - entry["paper"])
    md = (repo / "reports/cifar100-ablation.md").read_text()
    assert "| B | top1_err.fused | 26.10 | no runs yet | 0 |  |" in md
    assert (repo / "reports/cifar100-ablation.png").read_bytes().startswith(b"\x89PNG")
    # Runs of other params (here: without the -S) are not taken for the row's.
    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation")
    assert code == 2 and "made from 2 runs, and this report finds 0" in out  # not replaced by less
    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation", "--force")
    assert code == 0 and "no runs yet: A, B, C, D" in out
    # The row again with other params (a tuned row beside its preset): its own experiment, the
    # preset's run kept, and the same command skips it after.
    tuned = [*args[:4], "--seeds", "0", *SET_TINY, "-S", "method.ffl.temperature=2.0"]
    code, out = ffl(repo, monkeypatch, *tuned)
    assert code == 0, out
    (name,) = set(experiments(repo)) - set(runs)
    assert re.fullmatch(r"cifar100-ablation-D-[0-9a-f]{6}-s0", name)
    params = experiments(repo, "params")
    assert params[name]["method"]["ffl"]["temperature"] == 2.0
    assert params["cifar100-ablation-D-s0"]["method"]["ffl"]["temperature"] == 3.0
    code, out = ffl(repo, monkeypatch, *tuned)
    assert code == 0 and f"{name}: recorded already (dvc exp show); skipped" in out, out
    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation", *SET_TINY, "-S", "method.ffl.temperature=2.0")
    rows = json.loads((repo / "reports/cifar100-ablation.json").read_text())["rows"]
    assert next(e["runs"] for e in rows if e["row"] == "D") == [name]
    # A clone without the experiments (refs, which only `dvc exp push` sends) reports the same
    # runs: every report keeps the runs it was made from beside itself, in reports/runs/.
    assert {p.stem for p in (repo / "reports/runs").glob("*.json")} == {*runs, name}
    run("dvc exp remove -A", repo)
    assert experiments(repo) == {}
    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation", *SET_TINY)
    assert code == 0, out
    assert json.loads((repo / "reports/cifar100-ablation.json").read_text())["rows"] == report


@pytest.mark.slow  # a git + DVC repository, runs on Ray
def test_a_failed_run_is_reported_and_the_others_are_recorded(repo, monkeypatch, tmp_path):
    tables = yaml.safe_load((ROOT / "configs/tables.yaml").read_text())
    table = tables["cifar100-ablation"]
    table["rows"]["diverges"] = {"set": ["train.lr=1e30", "train.momentum=0.99"], "paper": {"top1_err.fused": 1.0}}
    path = Path(repo) / "tables.yaml"
    path.write_text(yaml.safe_dump({"t": table}))
    run("git add tables.yaml && git commit -qm tables", repo)
    args = ["reproduce", "t", "--tables", "tables.yaml", "--rows", "diverges", "--rows", "C", "--seeds", "0"]
    # The disk fills as the trained run is recorded (`dvc exp save`): that run is reported as not
    # recorded, and the same command records it.
    from pipeline import experiments as recording
    from pipeline.errors import UserError

    dvc = recording.dvc

    def full_disk(*a, **k):
        if a[:2] == ("exp", "save"):
            raise UserError("dvc exp save: ERROR: [Errno 28] No space left on device")
        return dvc(*a, **k)

    monkeypatch.setattr(recording, "dvc", full_disk)
    code, out = ffl(repo, monkeypatch, *args, *SET_TINY)
    assert code == 1, out
    assert "t-C-s0: trained, but not recorded: dvc exp save: ERROR: [Errno 28] No space left on device" in out
    assert "2 of 2 runs failed" in out and "t-C-s0" not in experiments(repo)
    monkeypatch.setattr(recording, "dvc", dvc)
    code, out = ffl(repo, monkeypatch, *args, *SET_TINY)
    assert code == 1, out
    assert "t-diverges-s0: failed:" in out and "became non-finite" in out
    assert "1 of 2 runs failed (t-diverges-s0: their reasons above)" in out
    assert "t-C-s0: recorded as a DVC experiment" in out
    # the reason whole, to its last words (it used to be cut at 200 characters, mid-word)
    assert "the last good checkpoint is kept" in next(x for x in out.splitlines() if x.startswith("t-diverges-s0"))
    assert "t-C-s0" in experiments(repo) and "t-diverges-s0" not in experiments(repo)


@pytest.mark.slow  # a git + DVC repository, runs on Ray
def test_a_rows_seeds_trained_as_one_model_are_recorded_as_each_run_alone(repo, monkeypatch, tmp_path):
    """reproduce.stack_seeds: the seeds of a row train as one model (ffl.stacked), and each is
    recorded with the model, curves and metrics it gets when it runs alone."""
    from ffl.artifact import load_model

    # fp32, ResNet-8 at lr 0.01: in bf16, or at lr 0.1 on five 16-image steps of a ResNet-32, the
    # different summation order of a grouped convolution grows far past any useful tolerance (as
    # it does between two GPUs); here the runs agree to ~1e-6.
    exact = ["train.precision=fp32", "model.arch=resnet8", "train.lr=0.01"]
    fp32 = [*SET_TINY, *(a for s in exact for a in ("-S", s))]
    args = ["reproduce", "cifar100-ablation", "--rows", "B", "--seeds", "3", "--seeds", "4", *fp32]
    code, out = ffl(repo, monkeypatch, *args, "-S", "reproduce.stack_seeds=true")
    assert code == 0, out
    assert "cifar100-ablation-B: seeds 3, 4 trained as one model" in out
    assert {"cifar100-ablation-B-s3", "cifar100-ablation-B-s4"} <= set(experiments(repo))
    # `ffl exps`: the runs in a view of 120 columns, the deployed classifier's error among them.
    code, view = ffl(repo, monkeypatch, "exps")
    assert code == 0 and max(map(len, view.splitlines())) <= 120
    b4 = next(line.split() for line in view.splitlines() if line.split()[:1] == ["cifar100-ablation-B-s4"])
    errors = experiments(repo)["cifar100-ablation-B-s4"]["top1_err"]
    assert b4[1:5] == ["ffl", "resnet8+resnet8", "4", "fused"]  # B: no fusion module, fused = the ensemble
    assert float(b4[5]) == pytest.approx(errors["fused"], abs=0.005)
    run("dvc exp apply cifar100-ablation-B-s4", repo)
    try:
        stacked = dict(load_model(Path(repo) / "models/model.pt")[0].state_dict())
        stacked_metrics = json.loads((Path(repo) / "metrics/test.json").read_text())
        stacked_curves = json.loads((Path(repo) / "dvclive/metrics.json").read_text())
    finally:
        run("git checkout -- . && git clean -fdq", repo)
    # The same run alone, as `ffl reproduce` runs one run.
    monkeypatch.chdir(repo)
    (alone_run,) = tb.plan(tb.load_tables(), "cifar100-ablation", ["B"], [4], [*TINY, *exact])
    (files,), _ = rp.execute([alone_run.raw], str(tmp_path), 1)
    (tmp_path / "model.pt").write_bytes(files["models/model.pt"])
    alone = dict(load_model(tmp_path / "model.pt")[0].state_dict())
    for key, value in alone.items():
        torch.testing.assert_close(stacked[key], value, rtol=1e-4, atol=1e-4, msg=key)
    assert flat(json.loads(files["metrics/test.json"])) == pytest.approx(flat(stacked_metrics), abs=0.01)
    assert flat(json.loads(files["dvclive/metrics.json"])) == pytest.approx(flat(stacked_curves), abs=1e-4)


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


@pytest.mark.slow  # a git + DVC repository, runs on Ray
def test_uncommitted_code_is_refused_before_any_run(repo, monkeypatch):
    (Path(repo) / "ffl/extra.py").write_text("# an uncommitted change\n")
    try:
        code, out = ffl(repo, monkeypatch, "reproduce", "cifar100-ablation", "--rows", "B", "--seeds", "0")
        assert code == 2 and "uncommitted changes (ffl/extra.py ...)" in out
    finally:
        (Path(repo) / "ffl/extra.py").unlink()


@pytest.mark.slow  # a git + DVC repository, runs on Ray
def test_report_checks_every_table_and_key_before_writing(repo, monkeypatch):
    monkeypatch.chdir(repo)
    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation", "nosuch")
    assert code == 2 and "no table 'nosuch'" in out and not (Path(repo) / "reports/cifar100-ablation.md").exists()
    code, out = ffl(repo, monkeypatch, "report", "cifar100-ablation", "-S", "nokey=1")
    assert code == 2 and "nokey: unknown key" in out


def own_table_runs(errors: dict[str, list[float]]) -> list[dict]:
    """Experiments as `dvc exp show` lists them: one per seed of cifar10-cpu's rows, with the given
    deployed-classifier errors (and sub-network means 1 point above)."""
    table = TABLES["cifar10-cpu"]
    runs = []
    for row, values in errors.items():
        for seed, err in enumerate(values):
            raw = apply_overrides(tb.row_raw(table, row), [f"seed={seed}"])
            p = validate(raw)
            deployed = p.method_class.deployed(len(p.archs()), p.settings())
            top1 = {deployed: err, "sub_mean": err + 1.0}
            runs.append({"name": f"{row}-s{seed}", "params": raw, "metrics": {"test": {"top1_err": top1}}})
    return runs


def test_a_table_without_paper_numbers_compares_every_row_with_its_vanilla_row(monkeypatch):
    from pipeline import report

    monkeypatch.chdir(ROOT)
    table = TABLES["cifar10-cpu"]
    runs = own_table_runs({"vanilla": [20.0, 21.0, 22.0], "ffl": [17.0, 17.5, 18.0], "dml": [21.0, 22.0, 20.0]})
    entries = {(e["row"], e["metric"]): e for e in report.summarise(table, runs)}
    ffl = entries["ffl", "top1_err.fused"]
    assert ffl["deployed"] and ffl["paper"] is None and ffl["mean"] == pytest.approx(17.5)
    assert ffl["vs_baseline"] == pytest.approx(-3.5)  # 17.5 - 21.0
    # 2 x sqrt(0.25/3 + 1.0/3) = 1.291: the 3.5-point gain is beyond the seeds' spread, DML's 0.0 is not
    assert ffl["margin"] == pytest.approx(2 * (1.25 / 3) ** 0.5)
    assert ffl["beyond_spread"] is True
    assert entries["dml", "top1_err.ensemble"]["beyond_spread"] is False
    assert entries["ffl", "top1_err.sub_mean"]["vs_baseline"] == pytest.approx(-2.5)  # against vanilla's sub0
    assert "vs_baseline" not in entries["vanilla", "top1_err.sub0"]  # the baseline itself
    assert entries["pcl", "top1_err.mean0"]["mean"] is None  # no runs: said, not compared
    md = report.markdown("cifar10-cpu", table, list(entries.values()))
    assert "| ffl | fused (deployed) | 17.50 +- 0.50 | 3 | -3.50 | 1.29 | yes |" in md
    assert "| dml | ensemble (deployed) | 21.00 +- 1.00 | 3 | +0.00 | 1.63 | no |" in md
    assert "| pcl | mean0 (deployed) | no runs yet | 0 |  |  |  |" in md
    assert report.picture(table, list(entries.values())).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: {"../../escape": t}, "../../escape: a table's name is a plain word"),
        (
            lambda t: {"t": t | {"rows": {"A": {"set": []}}}},
            "rows without paper numbers are compared with a row of the table: name it in compare",
        ),
        (lambda t: {"t": t | {"compare": "Z"}}, "compare: 'Z' is not one of its rows (A, B, C, D)"),
        (lambda t: {"t": t | {"metrics": ["top1.fused"]}}, "metrics: 'top1.fused' is not top1_err.<classifier>"),
        (lambda t: {"t": t | {"rows": {"r 1": t["rows"]["A"]}}}, "t.rows.r 1.[key]: String should match pattern"),
        (lambda t: {"t": t | {"set": ["seed=5"]}}, "seed is set by `ffl reproduce --seeds`, not by a table or a row"),
        (
            lambda t: {"t": t | {"rows": {"A": {"sett": []}}, "titel": "x"}},
            "t.yaml: t.rows.A.sett: unknown key; did you mean t.rows.A.set? (and 1 more)",
        ),
        (lambda t: {"t": {k: v for k, v in t.items() if k != "base"}}, "t.yaml: t.base: required key is missing"),
        (
            lambda t: {"t": t | {"rows": {"A": {"set": [], "paper": {"top1_err.bogus": 50.0}}}}},
            "t.A.paper.top1_err.bogus: not a metric its runs report (top1_err or top5_err of sub0, sub1, ensemble, "
            "fused, sub_mean)",
        ),
    ],
)
def test_tables_that_could_not_be_recorded_or_reported_are_refused_before_any_run(
    tmp_path, monkeypatch, change, message
):
    table = yaml.safe_load((ROOT / "configs/tables.yaml").read_text())["cifar100-ablation"]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(change(table)))
    monkeypatch.chdir(ROOT)
    name = next(iter(change(table)))
    result = runner.invoke(app, ["reproduce", name, "--tables", str(tmp_path / "t.yaml"), "--dry-run"])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_run_whose_node_or_worker_was_lost_says_so_in_one_line():
    import ray.exceptions

    from pipeline.reproduce import run_failure

    lost = ray.exceptions.NodeDiedError("Task failed because the node it was running on is dead or unavailable.\n...")
    assert run_failure(lost) == "its Ray node was lost, on each of 2 tries (a preempted or crashed node)"
    died = ray.exceptions.WorkerCrashedError()
    assert run_failure(died) == "its Ray worker process died, on each of 2 tries (the system out of memory, or killed)"
    assert run_failure(ValueError("bad shape\nmore")) == "bad shape"


def test_a_failed_dvc_command_is_said_by_its_own_error_line():
    import subprocess

    from pipeline.experiments import dvc_reason

    damaged_config = subprocess.CompletedProcess(
        [],
        251,
        "",
        "ERROR: configuration error - config file error: Invalid line ('garbage') at line 1.\n"
        'Traceback (most recent call last):\n  File "dvc/config.py", line 213, in load_file\n'
        "configobj.ParseError: Invalid line ('garbage') at line 1.\n",
    )
    assert dvc_reason(damaged_config).startswith("ERROR: configuration error - config file error")
    assert dvc_reason(subprocess.CompletedProcess([], 1, "", "something\nwent wrong\n")) == "went wrong"
    assert dvc_reason(subprocess.CompletedProcess([], 1, "", "")) == "failed"
