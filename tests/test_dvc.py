"""The DVC pipeline as a user drives it: dvc repro, dvc exp run -S, dvc exp show, metrics, plots."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, tiny_params, write_params

pytestmark = pytest.mark.slow


# dvc and the `ffl` stage commands come from the environment that runs the tests.
ENV = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))


def run(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, shell=isinstance(cmd, str), env=ENV)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of this project with tiny params, as a git + DVC repository."""
    d = tmp_path_factory.mktemp("repo")
    for name in ("ffl", "pipeline"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", d)
    (d / "tune").mkdir()
    shutil.copy(ROOT / "tune/dvc.yaml", d / "tune")
    raw = tiny_params()
    raw["tune"] = {
        "trials": 2,
        "epochs": 1,
        "sampler": "random",
        "scheduler": {"name": "fifo"},
        "space": {"method": {"ffl": {"temperature": {"type": "uniform", "low": 2.0, "high": 4.0}}}},
    }
    write_params(d, raw)
    (d / ".gitignore").write_text("__pycache__/\n/tune/ray/\n")
    run("git init -q && git config user.email t@t && git config user.name t", d)
    run("dvc init -q && git add -A && git commit -qm init", d)
    run("dvc repro -q", d)
    return Path(d)


def test_dvc_repro_produces_metrics_plots_and_the_model_artifact(repo):
    metrics = json.loads(run("dvc metrics show --json", repo))
    shown = json.dumps(metrics)
    for key in ("fused", "ensemble", "sub0", "sub1", "sub_mean", "top1_err", "top5_err"):
        assert key in shown
    plots = json.loads(run("dvc plots show --json", repo))
    assert not plots.get("errors")
    assert {"dvclive/plots/metrics/val/acc/fused.tsv", "dvclive/plots/metrics/train/loss/ekd.tsv"} <= set(plots["data"])
    from dvc.repo import Repo

    artifact = Repo(str(repo)).artifacts.read()["dvc.yaml"]["ffl-model"]
    assert artifact.type == "model" and (repo / artifact.path).exists()
    # Nothing changed: a second repro does no work.
    assert "didn't change" in run("dvc repro", repo) or "up to date" in run("dvc status", repo)


def test_dvc_exp_run_with_set_params_is_versioned(repo):
    run("git add -A && git commit -qm baseline", repo)
    run(["dvc", "exp", "run", "-q", "-n", "dml-exp", "-S", "method.name=dml", "-S", "train.epochs=1"], repo)
    table = json.loads(run("dvc exp show --json", repo))
    text = json.dumps(table)
    assert "dml-exp" in text and '"dml"' in text
    # The workspace now holds the DML run: its metrics differ from the committed FFL baseline's.
    diff = json.loads(run("dvc metrics diff --json", repo))
    assert "sub0.top1_err" in diff["metrics/test.json"]
    plots = json.loads(run("dvc plots show --json", repo))
    assert not plots.get("errors") and "dvclive/plots/metrics/val/acc/sub1.tsv" in plots["data"]


def test_the_search_is_a_dvc_stage_outside_the_default_pipeline(repo):
    run("git checkout -- params.yaml", repo)  # back from the DML experiment to the FFL baseline
    assert "ffl tune" not in run("dvc repro --dry", repo)  # `dvc repro` (make repro) never starts a search
    run("dvc repro -q tune/dvc.yaml", repo)
    summary = json.loads((repo / "tune/summary.json").read_text())
    assert summary["trials"] == 2 and "best_params" in summary
    assert (repo / "tune/best_params.yaml").exists() and (repo / "tune/trials.csv").exists()
    assert "didn't change" in run("dvc repro tune/dvc.yaml", repo)
    # Running the stage again (params changed, or forced) starts a fresh search on its own.
    run(["dvc", "repro", "-q", "-f", "tune/dvc.yaml"], repo)
