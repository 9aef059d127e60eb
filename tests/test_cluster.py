"""A multi-node Ray cluster, simulated on this machine (two nodes with their own CPUs): the runs of
`ffl reproduce` spread over the nodes, and each comes back to be recorded as a DVC experiment."""

import json

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from tests.helpers import TINY_RUN, project_repo, sh, tiny_params

pytestmark = pytest.mark.slow
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
    from pipeline.stages import prepare
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
    from pipeline.tune import check_files_reach_every_node

    split = FileSplit(np.array(["a/1.png"]), np.array([0]))
    data = FileDataset("imagefolder", ["a"], (0.5,) * 3, (0.25,) * 3, str(tmp_path), {"train": split})
    with pytest.raises(UserError) as e:
        check_files_reach_every_node(data)
    for node in (n["NodeID"][:8] for n in ray.nodes() if n["Alive"]):
        assert node in str(e.value)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/1.png").write_bytes(b"")
    check_files_reach_every_node(data)  # seen on every node: no error
