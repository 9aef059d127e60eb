"""The Ray cluster a command runs on (`ffl tune`, `ffl reproduce`): joined or started, and checked
before any work (reachable, resources a trial asks for, image files every node must see)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import ray
import ray.tune

from ffl.data import FileDataset
from ffl.errors import one_line
from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.signals import signals_deferred, take_back_terminate


def start_ray(address: str | None) -> None:
    """Joins the cluster at ``address`` (or starts a local Ray), quietly: Ray's start-up notes (its
    token-authentication warning, the Tune result table and TensorBoard hint) are not for the
    person running `ffl`; its errors still come through. One place for tune and reproduce."""
    import logging

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    check_reachable(address)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's console reporter: silent at verbose 0
    logging.getLogger("ray").setLevel(logging.ERROR)
    # "local", not None, when no cluster is named: with None, Ray joins whatever cluster
    # /tmp/ray/ray_current_cluster names, a stale one included (a killed `ray start` leaves it,
    # and the search then hangs waiting on a head that is gone).
    try:
        # An interrupt while Ray starts would be lost in its start-up (raised where Python can only
        # print it, in a forked child's lock release, and the command went on): held until Ray has
        # started, then raised where the command handles it.
        with signals_deferred(), sigterm_left_alone():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as e:  # auto with no cluster on this machine (Ray's own message names flags)
        raise UserError(
            f"--address {address}: no running Ray cluster was found ({one_line(e).split('.')[0]}); "
            "start one with `ray start --head`, or leave --address out for a Ray of this machine alone"
        ) from None
    # ray.init installs its own SIGTERM handler (exit 15, no word; mid-call, an abort): SIGTERM is
    # Ctrl-C again, so that a pre-empted reproduce or search ends as an interrupted one does.
    take_back_terminate()


@contextlib.contextmanager
def sigterm_left_alone() -> Iterator[None]:
    """ray.init first sets its own SIGTERM handler (``sys.exit(15)``, and where it runs inside
    Ray's start-up the exit is printed and ignored): ffl's signal policy (pipeline.signals) owns
    SIGTERM, so Ray's setter does nothing while it starts. A private function of Ray's, looked up
    at its call: where a later Ray has none, nothing is changed (and take_back_terminate still
    puts SIGTERM back once it has started)."""
    utils = getattr(getattr(ray, "_private", None), "utils", None)
    original = getattr(utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = original


def check_reachable(address: str | None, timeout_s: float = 10.0) -> None:
    """A cluster address that nothing answers on: Ray would retry for minutes; say so at once."""
    if not address or address in ("auto", "local"):
        return  # a local Ray, or the one this machine runs (Ray itself says when there is none)
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address: {address!r} is not host:port (or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(
            f"--address: no Ray cluster answers at {host}:{port} ({e.strerror or e}); start one with "
            "`ray start --head`, or check the address (and RAY_ADDRESS)"
        ) from None


def check_files_reach_every_node(data) -> None:
    """An image-file dataset travels to the trials as an index of paths: every node must see the
    images at the same place. Checked on each live node before any trial starts."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not isinstance(data, FileDataset):
        return  # the arrays themselves travel through Ray's object store
    first = str(Path(data.root) / str(data.splits["train"].paths[0]))
    probe = ray.remote(lambda path: Path(path).is_file())
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    on = lambda node: NodeAffinitySchedulingStrategy(node, soft=False)
    seen = ray.get([probe.options(num_cpus=0, scheduling_strategy=on(n)).remote(first) for n in nodes])
    missing = [n[:8] for n, ok in zip(nodes, seen) if not ok]
    if missing:
        raise UserError(
            f"data.root: {first} is not on node(s) {', '.join(missing)} of the Ray cluster; every node needs "
            f"the images under {data.root} (the same path, or a shared mount)"
        )


def check_resources(params: Params) -> None:
    """Ray queues a trial that no node can hold and waits for it forever: refuse it before it starts."""
    r = params.tune.resources
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= r.cpu and n.get("GPU", 0) >= r.gpu for n in nodes):
        return
    have = "; ".join(f"{n.get('CPU', 0):g} CPUs, {n.get('GPU', 0):g} GPUs" for n in nodes) or "no live node"
    key = "tune.resources.gpu" if r.gpu and not any(n.get("GPU", 0) >= r.gpu for n in nodes) else "tune.resources.cpu"
    raise UserError(
        f"{key}: a trial asks for {r.cpu:g} CPUs and {r.gpu:g} GPUs, but no node of the Ray cluster has them "
        f"(nodes: {have}); lower it, or add such a node"
    )


# What ended a run or a trial that Ray lost, and why such a thing happens: one wording for
# reproduce's runs and tune's trials (Ray's own message for it is a paragraph).
LOST = {
    "node": ("its Ray node was lost", "a preempted or crashed node"),
    "worker": ("its Ray worker process died", "the system out of memory, or killed"),
}


def lost(what: str, tries: str = "") -> str:
    """``its Ray node was lost[, <tries>] (a preempted or crashed node)``, for ``what`` node or worker."""
    said, why = LOST[what]
    return f"{said}{', ' + tries if tries else ''} ({why})"
