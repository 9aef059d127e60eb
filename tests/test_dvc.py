"""The DVC pipeline as a user drives it: dvc repro, dvc exp run -S, dvc exp show, metrics, plots."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ENV, ROOT, project_repo, sh, temperature_search, tiny_params

pytestmark = pytest.mark.slow


run = sh


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of this project with tiny params, as a git + DVC repository, its pipeline run once and
    committed: the baseline every test starts from (none relies on another having run)."""
    raw = tiny_params()
    raw["tune"] = temperature_search()
    d = project_repo(tmp_path_factory.mktemp("repo"), raw, ignore="__pycache__/\n/tune/ray/\n")
    run("dvc repro -q", d)
    run("git add -A && git commit -qm baseline", d)
    return Path(d)


@pytest.fixture(autouse=True)
def baseline(repo):
    """Every test starts from the committed baseline, whatever ran before it: the params, the curves
    and metrics git keeps, the data and models of DVC's cache, no untracked results."""
    run("git checkout -- . && git clean -fdq && rm -rf tune && dvc checkout -q", repo)
    assert "up to date" in run("dvc status", repo)


def test_dvc_repro_produces_metrics_plots_and_the_model_artifact(repo):
    metrics = json.loads(run("dvc metrics show --json", repo))
    test = next(iter(metrics.values()))["data"]["metrics/test.json"]["data"]["test"]
    assert set(test["top1_err"]) == set(test["top5_err"]) == {"sub0", "sub1", "ensemble", "fused", "sub_mean"}
    # Three charts a person reads at a glance, not one per curve; each line one classifier or term.
    plots = json.loads(run("dvc plots show --json", repo))
    assert not plots.get("errors")
    charts = {k.rsplit("/", 1)[-1]: v[0].get("content") for k, v in plots["data"].items()}
    assert set(charts) == {"top1_err.json", "loss.json", "lr.json", "confusion.json", "cam.png"}
    cam = plots["data"]["plots/cam.png"][0]  # the class activation maps, an image DVC shows as it is
    assert cam["type"] == "image" and Path(cam["url"]).read_bytes().startswith(b"\x89PNG"), cam
    assert "rect" in json.dumps(charts["confusion.json"])  # DVC's confusion template
    series = {(p["series"], p["split"]) for p in charts["top1_err.json"]["data"]["values"]}
    assert series == {(c, s) for c in ("sub0", "sub1", "ensemble", "fused") for s in ("train", "val")}
    assert charts["loss.json"]["encoding"]["x"]["title"] == "epoch"
    from dvc.repo import Repo

    artifacts = Repo(str(repo)).artifacts.read()["dvc.yaml"]
    assert artifacts["ffl-model"].type == "model" and (repo / artifacts["ffl-model"].path).exists()
    exported = {p.name for p in (repo / artifacts["ffl-export"].path).iterdir()}
    assert exported == {f"{c}.{f}" for c in ("sub0", "sub1", "fused") for f in ("pt2", "onnx")} | {"model.json"}
    # Nothing changed: a second repro runs no stage.
    again = run("dvc repro", repo)
    assert "Running stage" not in again and again.count("didn't change, skipping") == 4, again


def test_dvc_exp_run_with_set_params_is_versioned(repo):
    run(["dvc", "exp", "run", "-q", "-n", "dml-exp", "-S", "method.name=dml", "-S", "train.epochs=1", "evaluate"], repo)
    table = json.loads(run("dvc exp show --json", repo))
    text = json.dumps(table)
    assert "dml-exp" in text and '"dml"' in text
    # The workspace now holds the DML run: its metrics differ from the committed FFL baseline's.
    diff = json.loads(run("dvc metrics diff --json", repo))
    assert "test.top1_err.sub0" in diff["metrics/test.json"]
    plots = json.loads(run("dvc plots show --json", repo))
    assert not plots.get("errors")
    values = next(v for k, v in plots["data"].items() if k.endswith("top1_err.json"))[0]["content"]["data"]["values"]
    assert "fused" not in {p["series"] for p in values}  # DML has no fused classifier: its own chart, no gaps
    assert json.loads((repo / "plots/confusion.json").read_text())["classifier"] == "ensemble"


@pytest.mark.parametrize(("method", "deployed"), [("okddip", "leader"), ("kdcl", "ensemble"), ("pcl", "mean0")])
def test_the_methods_after_ffl_run_as_experiments(repo, method, deployed):
    """One epoch of each through `dvc exp run -S method.name=...` (the train stage: evaluation and
    export take every method alike and have their own tests)."""
    name = f"{method}-exp"
    run(["dvc", "exp", "run", "-q", "-n", name, "-S", f"method.name={method}", "-S", "train.epochs=1", "train"], repo)
    shown = json.loads(run("dvc exp show --json", repo))
    revs = [r for c in shown for e in (c.get("experiments") or []) for r in e.get("revs") or []]
    data = next(r for r in revs if r.get("name") == name)["data"]
    params = data["params"]["params.yaml"]["data"]["method"]
    curves = data["metrics"]["dvclive/metrics.json"]["data"]
    assert params["name"] == method and deployed in curves["val"]["top1_err"]


def test_the_readme_compact_view_of_experiments(repo):
    """The README's compact line fits 120 columns and shows what tells runs apart."""
    readme = (ROOT / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("ffl exps"))
    command = line.split("  #")[0].strip()
    run(
        ["dvc", "exp", "run", "-q", "-n", "view-exp", "-S", "method.name=dml", "-S", "train.epochs=1", "evaluate"], repo
    )
    shown = run(f"COLUMNS=300 {command}", repo)
    assert max(len(x) for x in shown.splitlines()) <= 120
    row = next(x.split() for x in shown.splitlines() if x.split()[:1] == ["view-exp"])
    assert row[1:5] == ["dml", "resnet8+resnet8", "0", "ensemble"]


def test_a_failed_exp_run_says_what_state_the_workspace_is_in(repo):
    proc = subprocess.run(
        ["dvc", "exp", "run", "-S", "data.source=cifar10"], cwd=repo, capture_output=True, text=True, env=ENV
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "error: data.root: cifar10 not found" in out
    assert "git checkout -- params.yaml dvclive metrics plots && dvc checkout" in out
    # ... and the way back it names works.
    run("git checkout -- params.yaml dvclive metrics plots && dvc checkout -q", repo)
    assert "up to date" in run("dvc status", repo)


def test_a_search_survives_every_later_dvc_command(repo):
    assert "ffl tune" not in run("dvc repro --dry", repo)  # `dvc repro` (make repro) never starts a search
    run("ffl tune", repo)
    results = {p: p.read_bytes() for p in (repo / "tune").rglob("*") if p.is_file() and "ray" not in p.parts}
    assert {"best_params.yaml", "best_overrides.txt", "trials.csv", "summary.json"} <= {p.name for p in results}
    overrides = (repo / "tune/best_overrides.txt").read_text().split()
    run(["dvc", "exp", "run", "-q", *overrides, "train"], repo)  # the stage a search feeds
    assert "tune" not in run("dvc status", repo)
    assert {p: p.read_bytes() for p in results} == results
    # Versioned next to the experiments, as the README says.
    run("dvc exp save -q -n search --include-untracked tune", repo)
    assert "search" in json.dumps(json.loads(run("dvc exp show --json", repo)))


def test_a_failed_workspace_experiment_is_undone_by_what_its_error_says(repo):
    """`dvc exp run -S` with a typo fails in the train stage, after DVC wrote the -S into params.yaml
    and removed train's outputs; the commands the error line names bring everything back."""
    d = repo
    status = run("git status --porcelain", d)
    files = ("params.yaml", "dvc.lock", "models/model.pt", "dvclive/metrics.json", "metrics/test.json")
    before = {f: (d / f).read_bytes() for f in files}
    proc = subprocess.run(
        ["dvc", "exp", "run", "-S", "method.name=fll"], cwd=d, env=ENV, capture_output=True, text=True
    )
    assert proc.returncode != 0
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error: method.name"))
    assert not (d / "models/model.pt").exists() and "fll" in (d / "params.yaml").read_text()
    restore = line.split("`")[-2]  # the last command in backticks
    assert restore == "git checkout -- params.yaml dvclive metrics plots && dvc checkout"
    run(restore, d)
    assert run("git status --porcelain", d) == status
    assert "up to date" in run("dvc status", d)
    assert {f: (d / f).read_bytes() for f in files} == before
