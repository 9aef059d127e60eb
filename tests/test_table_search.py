"""`ffl tune --preset TABLE`: every row of a table searched with the table's one budget, each into
its own folder; an interrupted row resumes, a finished one is left alone, a changed budget is
refused. On the shapes data, two rows, tiny trials."""

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import FFL_ENV, ffl, project_repo, read_trials, search_params, sh, write_params

pytestmark = pytest.mark.slow

BUDGET = [
    "tune.trials=2",
    "tune.epochs=2",
    "tune.max_concurrent=1",
    "tune.sampler=random",
    "tune.seed=3",
    "tune.scheduler.name=fifo",
]


SPACE = {
    "method": {"ffl": {"temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}},
    "train": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.1}},
}


def write_table(workdir):
    write_params(workdir, search_params(space=SPACE))
    table = {
        "tiny": {
            "title": "two rows",
            "base": "params.yaml",
            "compare": "vanilla",
            "search": BUDGET,
            "rows": {"vanilla": {"set": ["method.name=vanilla"]}, "ffl": {"set": ["method.name=ffl"]}},
        }
    }
    (workdir / "tables.yaml").write_text(yaml.safe_dump(table, sort_keys=False))


def search_table(workdir, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "tune", "--preset", "tiny", "--tables", "tables.yaml", *args],
        cwd=workdir, env=FFL_ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_every_row_searched_alike_then_trained_tuned_and_reported_beside_its_defaults(tmp_path):
    """The whole path on a two-row table: both rows searched with the table's budget (one row's
    search interrupted and resumed), the tuned rows and the defaults trained over 2 seeds, and the
    report with default and tuned side by side."""
    repo = project_repo(tmp_path / "repo", search_params(space=SPACE))
    write_table(repo)
    sh("git add -A && git commit -qm table", repo)
    tmp_path = repo
    assert ffl(tmp_path, "prepare").returncode == 0
    # First sitting: vanilla's search finishes, ffl's is stopped once its first trial has finished.
    proc = search_table(tmp_path)
    deadline, row, lines = time.time() + 300, None, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[tune] tiny/"):
            row = line.split()[1].rstrip(":")
        if row == "tiny/ffl" and "finished: 1/2 done" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(lines)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(lines) + err
    assert err.strip().splitlines()[-1] == (
        "error: tune/tiny/ffl: search interrupted, finished trials kept; `ffl tune --preset tiny` continues it "
        "(and the rows after it)"
    )
    searches = tmp_path / "tune/tiny"
    assert (searches / "vanilla/summary.json").is_file() and not (searches / "ffl/summary.json").exists()

    # Second sitting, the same command: vanilla is left alone, ffl resumes with its finished trial.
    vanilla_before = (searches / "vanilla/trials.csv").read_bytes()
    again = ffl(tmp_path, "tune", "--preset", "tiny", "--tables", "tables.yaml")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[tune] tiny/vanilla: searched already (all 2 trials ran" in again.stdout
    assert "[tune] tiny/ffl: resuming its search" in again.stdout
    assert (searches / "vanilla/trials.csv").read_bytes() == vanilla_before
    summaries = {r: json.loads((searches / r / "summary.json").read_text()) for r in ("vanilla", "ffl")}
    assert summaries["vanilla"]["budget"] == summaries["ffl"]["budget"]  # the same budget, recorded
    budget = summaries["ffl"]["budget"]
    assert (budget["trials"], budget["trial_epochs"], budget["sampler"], budget["sampler_seed"]) == (2, 2, "random", 3)
    for r, s in summaries.items():
        assert s["ended"] == "all 2 trials ran" and s["trials"] == 2 and s["wall_s"] > 0, r
        assert len(read_trials(searches / r / "trials.csv")) == 2
    # ffl's wall time counts both sittings; its own knob was searched, vanilla's space is lr alone.
    assert "method.ffl.temperature" in summaries["ffl"]["best_params"]
    assert set(summaries["vanilla"]["best_params"]) == {"train.lr"}
    overrides = (searches / "ffl/best_overrides.txt").read_text()
    assert "-S method.ffl.temperature=" in overrides and "tune." not in overrides

    # A third sitting has nothing left to do; a changed budget is refused, naming the rows.
    done = ffl(tmp_path, "tune", "--preset", "tiny", "--tables", "tables.yaml")
    assert done.returncode == 0 and done.stdout.count("searched already") == 2
    changed = ffl(tmp_path, "tune", "--preset", "tiny", "--tables", "tables.yaml", "-S", "tune.trials=3")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines()[-1] == (
        "error: --preset tiny: vanilla, ffl searched with other params in tune/tiny; the same -S continues "
        "them, --fresh searches every row again"
    )

    # Both rows over two seeds at their defaults and at their best params, recorded side by side.
    seeds = ["--seeds", "0", "--seeds", "1", "--tables", "tables.yaml"]
    for args in ([], ["--tuned"]):
        done = ffl(tmp_path, "reproduce", "tiny", *seeds, *args)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1].startswith("4 recorded, 0 recorded before")
    report = ffl(tmp_path, "report", "tiny", "--tuned", "--tables", "tables.yaml")
    assert report.returncode == 0, report.stderr[-2000:]
    result = json.loads((tmp_path / "reports/tiny-tuned.json").read_text())
    rows = {e["row"]: e for e in result["rows"]}
    for r in ("vanilla", "ffl"):
        assert len(rows[r]["default"]["values"]) == 2 and len(rows[r]["tuned"]["values"]) == 2
        assert set(rows[r]["default"]["runs"]).isdisjoint(rows[r]["tuned"]["runs"])  # other experiments
    best = summaries["ffl"]["best_params"]["method.ffl.temperature"]
    assert rows["ffl"]["params"]["method.ffl.temperature"]["best"] == best
    assert rows["ffl"]["params"]["method.ffl.temperature"]["default"] == 3.0
    assert "diff" in rows["ffl"]["vs_tuned_vanilla"] and "margin" in rows["ffl"]["tuned_minus_default"]
    text = (tmp_path / "reports/tiny-tuned.md").read_text()
    assert "| ffl | fused |" in text and "tuned vs tuned vanilla" in text and "Every row's budget" in text
    assert (tmp_path / "reports/tiny-tuned.png").stat().st_size > 0


def test_a_search_budget_sets_the_tune_section_only(tmp_path):
    write_table(tmp_path)
    table = yaml.safe_load((tmp_path / "tables.yaml").read_text())
    table["tiny"]["search"].append("train.lr=0.5")
    (tmp_path / "tables.yaml").write_text(yaml.safe_dump(table))
    result = ffl(tmp_path, "tune", "--preset", "tiny", "--tables", "tables.yaml")
    assert result.returncode == 2 and "a search budget sets tune.* keys only" in result.stderr
    assert not (tmp_path / "tune").exists()


def test_every_method_but_vanilla_has_a_space_of_its_own_settings():
    from ffl.methods import METHODS
    from pipeline.params import read_yaml, validate
    from tests.helpers import ROOT

    params = validate(read_yaml(ROOT / "params.yaml"))
    own = set(read_yaml(ROOT / "params.yaml")["tune"]["space"]["method"])
    assert own == set(METHODS) - {"vanilla"}
    for name in METHODS:  # the shared dimensions, the same for every row, and the method's own
        dims = params.tune.dimensions(name)
        assert {"train.lr", "train.weight_decay"} <= set(dims)
        assert all(k.split(".")[1] == name for k in dims if k.startswith("method."))
        assert (name == "vanilla") == (len(dims) == 2), name


@pytest.mark.parametrize(
    ("value", "dim", "edge"),
    [
        (0.29, {"type": "loguniform", "low": 0.02, "high": 0.3}, True),  # DML's lr on the old bound
        (0.1, {"type": "loguniform", "low": 0.02, "high": 0.3}, False),
        (0.99, {"type": "uniform", "low": 0.0, "high": 1.0}, True),
        (0.5, {"type": "uniform", "low": 0.0, "high": 1.0}, False),
        (5, {"type": "int", "low": 0, "high": 5}, True),
        (4, {"type": "int", "low": 0, "high": 5}, False),
        (5, {"type": "choice", "values": [1, 3, 5]}, False),
    ],
)
def test_a_best_value_at_a_bound_of_its_space_is_on_an_edge(value, dim, edge):
    from pipeline.tuned_report import on_edge

    assert on_edge(value, dim) is edge


def test_best_overrides_become_a_rows_set(tmp_path):
    from pipeline.tuned_report import best_overrides

    (tmp_path / "best_overrides.txt").write_text('-S method.ffl.temperature=2.5 -S method.kdcl.ensemble="naive"\n')
    assert best_overrides(tmp_path / "best_overrides.txt") == [
        "method.ffl.temperature=2.5",
        "method.kdcl.ensemble=naive",
    ]
