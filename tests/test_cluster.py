"""A multi-node Ray cluster, simulated on this machine (nodes with their own CPUs): the runs of
`ffl reproduce` and the trials of `ffl tune` spread over the nodes and outlive the loss of one,
the search lives in shared storage, and a driver killed mid-search resumes from it."""

import json
import os
import signal
import time
from pathlib import Path

import pytest

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


def test_image_files_every_node_must_see_are_checked_on_each_node(cluster, tmp_path):
    import numpy as np
    import ray

    from ffl.data import FileDataset, FileSplit
    from pipeline.errors import UserError
    from pipeline.ray_cluster import check_files_reach_every_node

    split = FileSplit(np.array(["a/1.png"]), np.array([0]))
    data = FileDataset("imagefolder", ["a"], (0.5,) * 3, (0.25,) * 3, {"train": split}, root=str(tmp_path))
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


def _when_a_task_runs_on(node, name, deadline_s=300):
    """Waits until a worker of ``node`` executes the task or actor ``name`` (Ray titles such a
    process ``ray::name``): a task leased but not started yet would go to another node unharmed.
    Returns that worker process."""
    import psutil

    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    deadline = time.time() + deadline_s
    while True:
        for p in raylet.children(recursive=True):
            try:
                if any(part.startswith(f"ray::{name}") for part in p.cmdline()):
                    return p
            except psutil.Error:
                pass
        assert time.time() < deadline, f"no {name} task ever ran on the node"
        time.sleep(0.05)


def _lose_a_node_while(cluster, args, cwd, when):
    """`ffl ARGS --address` (another process) on the cluster with a third one-CPU node added; that
    node removed once ``when(node)`` returns. The node, the process, its stdout and stderr."""
    import subprocess
    import sys

    from tests.helpers import FFL_ENV

    lost = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args, "--address", cluster.address],
        cwd=cwd,
        env=FFL_ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        when(lost)
        cluster.remove_node(lost)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    return lost, proc, out, err


def test_reproduce_spreads_runs_over_the_nodes_and_a_lost_node_s_run_is_run_again(cluster, tmp_path):
    """`ffl reproduce --address` over three one-CPU nodes, a run on each; the node running one of
    them is lost mid-run: its run is run again on a node that is left, every run is recorded, once."""
    import ray

    repo = project_repo(tmp_path, tiny_params())
    args = ["reproduce", "cifar100-ablation", "--rows", "A", *[a for s in (0, 1, 2) for a in ("--seeds", str(s))]]
    tiny = [a for s in [*TINY, "train.epochs=4"] for a in ("-S", s)]

    def well_into_its_run(lost):
        """Once the run on the lost node has checkpointed its first epoch (of four)."""
        import tempfile

        from pipeline.reproduce import SCRATCH

        worker = _when_a_task_runs_on(lost, "execute")
        first_epoch = f"{SCRATCH}{worker.pid}-*/run0/checkpoints/last.pt"
        deadline = time.time() + 300
        while not any(Path(tempfile.gettempdir()).glob(first_epoch)):
            assert time.time() < deadline and worker.is_running(), "the run on the lost node never checkpointed"
            time.sleep(0.05)

    _, proc, out, err = _lose_a_node_while(cluster, [*args, *tiny], repo, well_into_its_run)
    assert proc.returncode == 0, out + err
    assert out.count("recorded as a DVC experiment") == 3, out
    shown = json.loads(sh("dvc exp show --json", repo))
    names = [rev["name"] for b in shown for e in b.get("experiments") or [] for rev in e["revs"]]
    assert sorted(names) == [f"cifar100-ablation-A-s{s}" for s in (0, 1, 2)]
    assert "Traceback" not in err
    # One CPU per node and per run: the runs ran side by side, on every node that is left.
    ran_on = {line.rsplit("node ", 1)[1].rstrip(")") for line in out.splitlines() if "ran on node" in line}
    assert ran_on == {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}


def _when_a_trial_reports_from(search, node, deadline_s=300):
    """The folder of the first trial that reported an epoch from ``node`` (trials report their node)."""
    deadline = time.time() + deadline_s
    while True:
        for result in search.glob("trial_*/result.json"):
            if f'"node": "{node}"' in result.read_text():
                return result.parent
        assert time.time() < deadline, f"no trial reported from node {node}"
        time.sleep(0.05)


def test_a_search_spreads_over_the_nodes_and_a_lost_node_s_trial_resumes_elsewhere(cluster, tmp_path):
    """`ffl tune --address` of three trials over three one-CPU nodes, into shared storage; the node
    running one of them is lost mid-trial: the trial resumes on a node that is left from its
    checkpoint (tune.max_failures: 1) and the search completes with every trial whole."""

    import ray

    from tests.helpers import search_params, write_params

    shared = tmp_path / "shared"
    write_params(
        tmp_path,
        search_params(
            trials=3,
            max_concurrent=3,
            epochs=6,
            storage=str(shared),
            space={"method": {"ffl": {"temperature": {"type": "loguniform", "low": 1.0, "high": 8.0}}}},
        ),
    )
    assert ffl(tmp_path, "prepare").returncode == 0
    on_lost = []
    lost, proc, out, err = _lose_a_node_while(
        cluster,
        ["tune"],
        tmp_path,
        lambda lost: on_lost.append(_when_a_trial_reports_from(shared / "search", lost.node_id[:8])),
    )
    (on_lost,) = on_lost
    assert proc.returncode == 0, out + err
    rows = read_trials(tmp_path / "tune/trials.csv")
    assert len(rows) == 3 and all(r["status"] == "completed" for r in rows), rows
    assert all(r["epochs"] == "6" for r in rows), rows  # the retried trial too, across its restore
    reports = [json.loads(x) for x in (on_lost / "result.json").read_text().splitlines()]
    assert reports[0]["node"] == lost.node_id[:8] and reports[-1]["node"] != lost.node_id[:8]
    mine = [r["epochs_done"] for r in reports if r["node"] != lost.node_id[:8]]
    assert mine[-1] == 6 and mine[0] > 1, reports  # went on from its checkpoint, not from epoch 1
    assert "Traceback" not in err and "ERROR" not in err, err
    assert (
        "stopped (its Ray node was lost (a preempted or crashed node)); it goes on from its last checkpoint "
        "(retry 1 of 1" in out
    ), out
    # One CPU per node and per trial: the trials ran on every node that is left; the search lived
    # in the shared storage only.
    assert {r["node"] for r in rows} == {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    assert (shared / "search").is_dir() and not (tmp_path / "tune/ray").exists()
