"""`ffl tune`: a real Ray Tune + Optuna search on tiny trials, failures, and resuming an interrupted
search (a killed driver resuming on a cluster: tests/test_cluster.py)."""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.errors import UserError
from pipeline.params import apply_overrides, load_params, read_yaml, validate
from tests.helpers import (
    ffl,
    ffl_as_a_user,
    needs_setpriv,
    read_trials,
    search_params,
    search_until_one_trial_finished,
    write_params,
)

pytestmark = pytest.mark.slow
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster left running
    yield
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_search_writes_table_best_params_and_plots_and_survives_diverging_trials(workdir, ray_session):
    from pipeline.stages.prepare import prepare
    from pipeline.tune import tune

    raw = search_params()
    raw["train"]["epochs"] = 5  # the full run's length; trials run tune.epochs = 2
    write_params(workdir, raw)
    base = read_yaml("params.yaml")
    raw = apply_overrides(base, ["method.ffl.ce_weight=0.5"])  # as `ffl tune -S ...` passes it
    params = validate(raw)
    prepare(params)
    summary = tune(params, raw, base=base)

    rows = read_trials(workdir / "tune/trials.csv")
    assert len(rows) == 3 and summary["trials"] == 3
    statuses = [r["status"] for r in rows]
    assert "completed" in statuses
    diverged = [r for r in rows if r["status"].startswith("failed")]
    assert diverged and all("became non-finite" in r["status"] and r["train.lr"] == "1e+30" for r in diverged)
    assert all(r["epochs"] == "0" for r in diverged)  # its first epoch never finished
    # The sampler saw the worst error, not NaN (which TPE ignores as a failed trial).
    assert all(float(r["score"]) == 100.0 for r in diverged)
    assert all(r["epochs"] == "2" for r in rows if r["status"] == "completed")
    assert all(r["val/top1_err/fused"] for r in rows if r["status"] == "completed")
    # What the best trial ran, twice: a whole params file, and -S pairs over the file the search
    # started from; both hold the -S given to the search and the trials' length.
    best = load_params(workdir / "tune/best_params.yaml")
    assert best.train.lr == 0.05 and best.settings().temperature == summary["best_params"]["method.ffl.temperature"]
    assert best.train.epochs == 2 and best.settings().ce_weight == 0.5
    words = (workdir / "tune/best_overrides.txt").read_text().split()
    assert words[::2] == ["-S"] * (len(words) // 2)
    pairs = words[1::2]
    assert {p.split("=")[0] for p in pairs} == {
        "method.ffl.temperature",
        "method.ffl.ce_weight",
        "train.lr",
        "train.epochs",
    }
    from_overrides = load_params("params.yaml", pairs)
    assert from_overrides.model_dump(exclude={"tune"}) == best.model_dump(exclude={"tune"})
    html = workdir / "tune/plots/optimization_history.html"
    assert 1000 < html.stat().st_size < 100_000  # plotly.js from its CDN, not embedded
    assert (workdir / "tune/plots/optimization_history.png").stat().st_size > 1000
    # Importances need two scored trials; with one (sampler seed 0: the other two diverged) the
    # file says why (test_importances_are_drawn_from_two_scored_trials: the picture).
    assert statuses.count("completed") == 1
    assert (workdir / "tune/plots/param_importances.txt").read_text() == (
        "not computed: 1 trial(s) scored; importances need at least 2\n"
    )
    assert not (workdir / "tune/plots/param_importances.png").exists()
    assert json.loads((workdir / "tune/summary.json").read_text())["failed"] == len(diverged)
    # An earlier search is never silently replaced.
    with pytest.raises(UserError, match="--resume continues it, --fresh discards it"):
        tune(params, read_yaml("params.yaml"))


def test_importances_are_drawn_from_two_scored_trials(tmp_path):
    from pipeline.tune_results import write_plots

    params = validate(search_params())
    rows = [
        {"status": "completed", "score": score, "method.ffl.temperature": t, "train.lr": lr}
        for score, t, lr in [(80.0, 2.0, 0.05), (70.0, 4.0, 0.05), (90.0, 6.0, 1.0e30), (60.0, 3.0, 0.05)]
    ]
    write_plots(rows, params, tmp_path)
    assert (tmp_path / "param_importances.png").stat().st_size > 1000
    assert (tmp_path / "optimization_history.png").stat().st_size > 1000
    assert not (tmp_path / "param_importances.txt").exists()


def test_a_time_budget_ends_the_search_and_ranks_what_finished_in_its_own_folder(workdir, ray_session):
    """tune.time_budget_min: no trial starts once it has run out, the trials that finished are
    ranked, and the results say so, with the split they were scored on; --out keeps two searches
    apart."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    space = {"method": {"ffl": {"temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}}}
    write_params(workdir, search_params(trials=40, max_concurrent=1, epochs=1, space=space, time_budget_min=0.25))
    assert ffl(workdir, "prepare").returncode == 0
    result = CliRunner().invoke(app, ["tune", "--out", "searches/ffl"])
    assert result.exit_code == 0, result.output
    summary = json.loads((workdir / "searches/ffl/summary.json").read_text())
    # The bound stopped it (40 one-epoch trials one at a time take minutes), and the results say so.
    assert summary["stopped"] == f"the time budget (0.25 min) ran out: {summary['trials']} of 40 trials ran"
    assert 1 <= summary["trials"] < 40 and "time budget (0.25 min) ran out" in result.output
    assert summary["scored_on"]["split"] == "val" and summary["scored_on"]["images"] == 40  # 25% of 160
    assert summary["wall_s"] >= 15  # it ran until the bound, not less
    assert len(read_trials(workdir / "searches/ffl/trials.csv")) == summary["trials"]
    assert "on the validation split" in (workdir / "searches/ffl/best_params.yaml").read_text()
    assert (workdir / "searches/ffl/ray/search").is_dir() and not (workdir / "tune").exists()


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": 1, "gpu": 1}, "error: tune.resources.gpu: a trial asks for 1 CPUs and 1 GPUs, but no node"),
        ({"cpu": 64, "gpu": 0}, "error: tune.resources.cpu: a trial asks for 64 CPUs and 0 GPUs, but no node"),
    ],
)
def test_resources_no_node_has_are_refused_instead_of_waiting_forever(workdir, ray_session, resources, message):
    from typer.testing import CliRunner

    from pipeline.cli import app

    write_params(workdir, search_params(resources=resources))
    assert ffl(workdir, "prepare").returncode == 0
    (workdir / "tune/ray/search").mkdir(parents=True)
    (workdir / "tune/ray/search/earlier").write_text("an earlier search")
    result = CliRunner().invoke(app, ["tune", "--fresh"])  # in this process: the module's Ray
    assert result.exit_code == 2
    assert result.output.startswith(message) and "(nodes: 2 CPUs, 0 GPUs)" in result.output
    assert (workdir / "tune/ray/search/earlier").exists()  # --fresh discards nothing before a search can start


def test_a_search_prints_ffls_lines_not_rays(workdir):
    """Ray's start-up notes (its token warning, Tune's table and TensorBoard hint) stay out of the
    output; the progress lines and the summary are what a person reads."""
    space = {"method": {"ffl": {"temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}}}
    write_params(workdir, search_params(trials=1, epochs=1, space=space))
    assert ffl(workdir, "prepare").returncode == 0
    result = ffl(workdir, "tune")
    assert result.returncode == 0, result.stderr
    both = result.stdout + result.stderr
    for chatter in ("Token authentication", "TensorBoard", "Configuration for experiment", "View detailed results"):
        assert chatter not in both, both
    assert "[tune] trial" in result.stdout and '"best_params"' in result.stdout


def test_trials_are_scored_on_validation_not_test(workdir):
    raw = search_params()
    raw["tune"]["metric"] = "test/top1_err/fused"
    write_params(workdir, raw)
    result = ffl(workdir, "tune")
    assert result.returncode == 2
    assert result.stderr.startswith("error: tune.metric: ffl reports val/top1_err/sub0")


def test_sigterm_ends_the_search_cleanly_and_it_resumes(workdir):
    proc, _ = search_until_one_trial_finished(workdir, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        "error: tune/ray/search: search interrupted, finished trials kept; `ffl tune --resume` continues it"
    )
    assert "Traceback" not in err and "Stack trace" not in err
    assert not (workdir / "tune/trials.csv").exists()  # no table of a partial search
    resumed = ffl(workdir, "tune", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = read_trials(workdir / "tune/trials.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)


def test_a_search_whose_folder_is_deleted_while_it_runs_fails_in_one_line(workdir):
    import shutil

    proc, _ = search_until_one_trial_finished(workdir, stderr=subprocess.PIPE)
    shutil.rmtree(workdir / "tune")  # a careless `rm -rf tune` beside the running search
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    assert err.strip().splitlines() == [
        "error: tune/ray/search: deleted while the search ran, so its trials could not keep their checkpoints and "
        "the search cannot be resumed; `ffl tune --fresh` runs it again (tune keeps no partial results)"
    ]
    assert not (workdir / "tune/trials.csv").exists() and not (workdir / "tune/summary.json").exists()
    # What the line says to run does run (a one-trial search, to keep the test short).
    again = ffl(workdir, "tune", "--fresh", "-S", "tune.trials=1", "-S", "tune.epochs=1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(read_trials(workdir / "tune/trials.csv")) == 1


@needs_setpriv
def test_a_results_folder_a_user_may_not_write_is_refused_before_ray_starts(workdir):
    write_params(workdir, search_params())
    assert ffl(workdir, "prepare").returncode == 0
    (workdir / "ro").mkdir(mode=0o555)
    result = ffl_as_a_user(workdir, "tune", "--out", "ro")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: ro: output directory is not writable"]
    assert not list((workdir / "ro").iterdir())


def test_sigterm_is_ctrl_c_from_the_moment_ray_has_started(workdir):
    """ray.init puts in its own SIGTERM handler (exit 15 without a word, or an abort mid-call): the
    pre-empted command must end as an interrupted one does."""
    script = (
        "import os, signal\n"
        "from pipeline.ray_cluster import start_ray\n"
        "from pipeline.signals import terminate_is_interrupt\n"
        "with terminate_is_interrupt():\n"
        "    start_ray(None)\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        signal.sigtimedwait([], 0)\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "interrupted", proc.stderr[-2000:]
    assert "SIGTERM" not in proc.stderr  # nor Ray's own report of it


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_while_ray_starts_is_an_interrupt(workdir, sig):
    """Ctrl-C while ray.init runs was lost inside it (the search or the runs went on); SIGTERM met
    ray.init's own handler (exit 15, no word). Both end the start as Ctrl-C does."""
    script = (
        "import os, signal, threading\n"
        "from pipeline.ray_cluster import start_ray\n"
        "from pipeline.signals import terminate_is_interrupt\n"
        "with terminate_is_interrupt():\n"
        f"    threading.Timer(0.5, os.kill, (os.getpid(), signal.{sig})).start()\n"
        "    try:\n"
        "        start_ray(None)\n"
        "        print('started')\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "interrupted", (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr[-2000:]


def test_an_address_nothing_answers_on_fails_at_once(workdir):
    import socket

    write_params(workdir, search_params())
    assert ffl(workdir, "prepare").returncode == 0
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.time()
    result = ffl(workdir, "tune", "--address", f"127.0.0.1:{port}")
    assert result.returncode == 2 and time.time() - start < 60
    assert result.stderr.startswith(f"error: --address: no Ray cluster answers at 127.0.0.1:{port}")
    assert not (workdir / "tune").exists()


def test_address_auto_without_a_cluster_is_one_line(monkeypatch):
    """Ray's own ConnectionError (auto, and no cluster on this machine) becomes the user's line.
    Ray's search is stubbed: it finds any cluster running here, a test's simulated one included."""
    import ray

    from pipeline.ray_cluster import start_ray

    def no_cluster(**kwargs):
        assert kwargs["address"] == "auto"
        raise ConnectionError(
            "Could not find any running Ray instance. Please specify the one to connect to by setting "
            "`--address` flag or `RAY_ADDRESS` environment variable."
        )

    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(UserError) as e:
        start_ray("auto")
    assert str(e.value) == (
        "--address auto: no running Ray cluster was found (Could not find any running Ray instance); "
        "start one with `ray start --head`, or leave --address out for a Ray of this machine alone"
    )


def test_a_search_in_shared_storage_resumes_and_refuses_other_params(workdir, tmp_path_factory):
    # tune.storage: where a cluster's nodes all reach (here another folder); the results land in tune/.
    shared = tmp_path_factory.mktemp("shared") / "ffl-tune"
    write_params(workdir, search_params(trials=1, epochs=1, storage=str(shared)))
    assert ffl(workdir, "prepare").returncode == 0
    assert ffl(workdir, "tune").returncode == 0
    assert (shared / "search").is_dir() and (shared / "search.params.json").is_file()
    assert not (workdir / "tune/ray").exists()
    table = (workdir / "tune/trials.csv").read_text()
    result = ffl(workdir, "tune", "--resume", "-S", "train.momentum=0.5")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {shared}/search: was started with other params (train.momentum: 0.9 -> 0.5); "
        "resume it with those, or start a new search with --fresh"
    )
    assert (workdir / "tune/trials.csv").read_text() == table
    reports = {p: p.read_text() for p in (shared / "search").glob("trial_*/result.json")}
    resumed = ffl(workdir, "tune", "--resume")  # the same params resume, from the storage
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # The finished search is taken up as it was: its trial is not run again, the table is its own.
    assert {p: p.read_text() for p in (shared / "search").glob("trial_*/result.json")} == reports
    assert [r["trial_id"] for r in read_trials(workdir / "tune/trials.csv")] == [
        r["trial_id"] for r in csv.DictReader(io.StringIO(table))
    ]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            "Failure # 1 (occurred at 2026-12-05_16-58-46)\nThe actor died unexpectedly before finishing this task.\n"
            "\tclass_name: ImplicitFunc\nThe actor died because its node has died. Node Id: e415d39d\n",
            "its Ray node was lost (a preempted or crashed node)",
        ),
        (
            "Failure # 2 (occurred at 2026-12-05_16-58-46)\nThe actor died unexpectedly before finishing this task.\n"
            "\tclass_name: ImplicitFunc\n\tpid: 19506\n",
            "its Ray worker process died (the system out of memory, or killed)",
        ),
        (
            "Failure # 1 (occurred at 2026-12-05_16-58-46)\nray::ImplicitFunc.train() (pid=1, ip=1.2.3.4)\n"
            'Traceback (most recent call last):\n  File "x.py", line 1, in f\nValueError: bad shape (3, 4)\n',
            "bad shape (3, 4)",
        ),
        (None, "no reason recorded"),
    ],
)
def test_a_trial_s_failure_is_said_in_one_line(error, said):
    from pipeline.tune import trial_failure

    assert trial_failure(error) == said
