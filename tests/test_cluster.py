"""A multi-node Ray cluster, simulated on this machine (two nodes with their own CPUs): the runs of
`ffl reproduce` and the trials of `ffl tune` spread over the nodes, the search lives in shared
storage, and a driver killed mid-search resumes from it."""

import json
import os
import signal
import time

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.helpers import TINY_RUN, ffl, project_repo, read_trials, search_until_one_trial_finished, sh, tiny_params

# Alone: its two raylets beside another test file's Ray lost the driver of a search once (make test's
# second worker); make test runs this file after the others.
pytestmark = [pytest.mark.slow, pytest.mark.alone]
TINY = TINY_RUN


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def test_reproduce_spreads_runs_over_the_nodes_and_records_them_all(cluster, tmp_path, monkeypatch):
    import ray

    repo = project_repo(tmp_path, tiny_params())
    monkeypatch.chdir(repo)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    args = ["reproduce", "cifar100-ablation", "--rows", "A", "--seeds", "0", "--seeds", "1"]
    result = CliRunner().invoke(app, [*args, *[a for s in TINY for a in ("-S", s)]])
    assert result.exit_code == 0, result.output
    # One CPU per node and per run: the two runs ran side by side, one on each node.
    ran_on = [line.rsplit("node ", 1)[1].rstrip(")") for line in result.output.splitlines() if "ran on node" in line]
    assert len(ran_on) == 2 and len(set(ran_on)) == 2
    assert {r for r in ran_on} <= {n[:8] for n in nodes}
    shown = json.loads(sh("dvc exp show --json", repo))
    names = {rev["name"] for b in shown for e in b.get("experiments") or [] for rev in e["revs"]}
    assert names == {"cifar100-ablation-A-s0", "cifar100-ablation-A-s1"}


def test_a_search_spreads_trials_over_the_nodes_into_shared_storage(cluster, tmp_path, monkeypatch):
    import csv

    import ray

    from pipeline.params import validate
    from pipeline.stages.prepare import prepare
    from pipeline.tune import tune
    from tests.helpers import temperature_search

    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "shared"  # every node reaches it (here: the one filesystem)
    raw = tiny_params()
    raw["tune"] = temperature_search(resources={"cpu": 1, "gpu": 0}, storage=str(shared))
    params = validate(raw)
    prepare(params)
    summary = tune(params, raw)
    assert summary["completed"] == 2
    with open(tmp_path / "tune/trials.csv") as f:
        rows = list(csv.DictReader(f))
    nodes = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    assert {r["node"] for r in rows} == nodes  # one CPU per node and per trial: one trial on each
    assert (shared / "search").is_dir() and not (tmp_path / "tune/ray").exists()


def test_image_files_every_node_must_see_are_checked_on_each_node(cluster, tmp_path):
    import numpy as np
    import ray

    from ffl.data import FileDataset, FileSplit
    from pipeline.errors import UserError
    from pipeline.ray_cluster import check_files_reach_every_node

    split = FileSplit(np.array(["a/1.png"]), np.array([0]))
    data = FileDataset("imagefolder", ["a"], (0.5,) * 3, (0.25,) * 3, str(tmp_path), {"train": split})
    with pytest.raises(UserError) as e:
        check_files_reach_every_node(data)
    for node in (n["NodeID"][:8] for n in ray.nodes() if n["Alive"]):
        assert node in str(e.value)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/1.png").write_bytes(b"")
    check_files_reach_every_node(data)  # seen on every node: no error


def test_a_killed_driver_resumes_its_search_from_the_shared_storage(cluster, tmp_path):
    """The driver (`ffl tune --address`, another process) killed once a trial has finished: the
    same command with --resume continues from the shared storage, the finished trial not run again."""
    shared = tmp_path / "shared"
    args = ["--address", cluster.address, "-S", f"tune.storage={shared}"]
    proc, first_id = search_until_one_trial_finished(tmp_path, args, start_new_session=True)
    deadline = time.time() + 300
    # A trial is finished for Ray once its experiment snapshot says so; kill after that.
    while not any("TERMINATED" in f.read_text() for f in (shared / "search").glob("experiment_state-*.json")):
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    trial_dir = next((shared / "search").glob(f"trial_{first_id}_*"))
    reports_before = (trial_dir / "result.json").read_text()

    resumed = ffl(tmp_path, "tune", "--resume", *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = read_trials(tmp_path / "tune/trials.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows)
    assert all(r["epochs"] == "3" for r in rows)  # the trial's own epoch count, across the restore
    assert first_id in {r["trial_id"] for r in rows}
    assert (trial_dir / "result.json").read_text() == reports_before  # finished trial not run again
    assert not (tmp_path / "tune/ray").exists()  # the search lived in the shared storage only
