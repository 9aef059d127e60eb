"""`ffl reproduce`: a table of the paper (configs/tables.yaml) over seeds, every run a DVC experiment.

Ray runs the runs: on this machine, or on a cluster with ``--address``, each with
``reproduce.cpus_per_run`` CPUs and ``1 / reproduce.runs_per_gpu`` of a GPU where there are GPUs
(so that several small runs can share one). A run is the pipeline's own stages (prepare, train,
evaluate) in a scratch directory of the worker; its outputs come back to this process, which
records each finished run as a DVC experiment named ``<table>-<row>-s<seed>`` (or, where HEAD
holds that name with other params, as a tuned row beside its preset, ``<table>-<row>-<digest>-s<seed>``) (`dvc exp save`
in a git worktree of HEAD that shares the repository's refs and DVC cache): `dvc exp show`,
`dvc metrics diff`, `dvc plots diff` and `dvc exp apply` then take it like any other experiment.
A run whose params are recorded at HEAD already is not run again, so an interrupted reproduction continues where it
stopped; a run that fails is reported with its reason and the others go on.
"""

from __future__ import annotations

from pathlib import Path

import ray
import ray.exceptions
import torch

from ffl import atomic
from ffl.errors import one_line
from pipeline import paths
from pipeline.callbacks import write_curves
from pipeline.dataset import load_prepared
from pipeline.errors import Interrupted, TrainingFailed, UserError
from pipeline.estimate import flops_per_image, train_images
from pipeline.experiments import OUTPUTS, check_repository, link_data_root, recorded, recorder, sort_out
from pipeline.params import Params, validate
from pipeline.params.schema import ReproduceParams
from pipeline.ray_cluster import lost, start_ray
from pipeline.run import finish_run
from pipeline.runtime import ensure_writable, resolve_device, working_directory
from pipeline.stacked import stacks, train_stacked
from pipeline.tables import Run


def execute(raws: list[dict], data_root: str, threads: float) -> tuple[list[dict[str, bytes]], str]:
    """A Ray task on whichever worker Ray chose: one run, or a row's seeds trained as one model
    (pipeline.stacked), each through the stages (as `dvc repro` runs them) in a scratch directory of
    its own; each run's outputs, and the node, back."""
    from pipeline.stages.sequence import run_stages  # dvc.yaml's stages: run in the worker, not the driver

    torch.set_num_threads(max(1, int(threads)))
    with atomic.scratch(SCRATCH) as scratch:
        dirs = [scratch / f"run{i}" for i in range(len(raws))]
        runs = []
        for d, raw in zip(dirs, raws):
            d.mkdir()
            with working_directory(d):
                runs.append(link_data_root(validate(raw), data_root))
        if len(runs) > 1:
            train_together(dirs, runs)
        else:
            with working_directory(dirs[0]):
                run_stages(runs[0], last="train")
        results = []
        for d, params in zip(dirs, runs):
            with working_directory(d):
                run_stages(params, first="evaluate")
                results.append({str(f): f.read_bytes() for f in output_files()})
    return results, ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def train_together(dirs: list[Path], runs: list[Params]) -> None:
    """The prepare and train stages of a row's seeds, the seeds trained as one model: each run's
    directory then holds what the train stage would have left there (its model and curves)."""
    from pipeline.stages.sequence import run_stages  # dvc.yaml's stages: run in the worker, not the driver

    with working_directory(dirs[0]):
        run_stages(runs[0], last="prepare")  # one dataset for all: the seeds share the data params
        data = load_prepared(runs[0])
        methods, histories = train_stacked(runs, data, resolve_device(runs[0].train.device))
    for d, params, method, history in zip(dirs, runs, methods, histories):
        with working_directory(d):
            if d != dirs[0]:
                Path("data").symlink_to(dirs[0] / "data")
            ensure_writable(paths.CHECKPOINTS, paths.DVCLIVE.parent)
            write_curves(history, paths.LIVE)
            finish_run(method, params, data)


def output_files() -> list[Path]:
    files = []
    for out in map(Path, OUTPUTS):
        files += [out] if out.is_file() else sorted(f for f in out.rglob("*") if f.is_file())
    return files


def reproduce(runs: list[Run], params: Params, address: str | None = None, echo=print) -> dict:
    """Runs what is not recorded yet; ``{"done": [...], "skipped": [...], "failed": {name: reason}}``."""
    check_repository()
    todo, skipped = sort_out(runs, recorded())
    summary = {"done": [], "skipped": list(skipped.values()), "failed": {}}
    for name in summary["skipped"]:
        echo(f"{name}: recorded already (dvc exp show); skipped")
    if not todo:
        return summary
    if not ray.is_initialized():
        start_ray(address)
    r = params.reproduce
    have_gpus = ray.cluster_resources().get("GPU", 0) > 0
    pending = {}
    for group in longest_first(task_groups(todo, r, have_gpus)):
        # A run of train.processes DDP processes (the ImageNet rows) holds that many GPUs on one node;
        # a row's stacked seeds share one.
        n = group[0].params.train.processes
        gpus = n / r.runs_per_gpu if have_gpus else 0
        root = str((Path.cwd() / group[0].params.data.root).resolve())
        # A run whose node or worker process is lost (a preempted node, the OOM killer) is run
        # again once, from its start; a run's own error is not retried (retry_exceptions is off).
        remote = ray.remote(execute).options(num_cpus=r.cpus_per_run * n, num_gpus=gpus, max_retries=LOST_RUN_RETRIES)
        pending[remote.remote([run.raw for run in group], root, r.cpus_per_run)] = group
        if len(group) > 1:
            echo(f"{group[0].table}-{group[0].row}: seeds {', '.join(str(x.seed) for x in group)} trained as one model")
    echo(f"{len(todo)} runs started ({len(summary['skipped'])} recorded already)")
    try:
        with recorder() as record:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                group = pending.pop(ready[0])
                try:
                    files, node = ray.get(ready[0])
                except Exception as e:  # the run's own failure: reported, the others go on
                    for run in group:
                        summary["failed"][run.name] = run_failure(e)
                        echo(f"{run.name}: failed: {summary['failed'][run.name]}")
                    continue
                for run, outputs in zip(group, files, strict=True):
                    try:
                        record(run, outputs)
                    except (UserError, OSError) as e:  # a full disk at `dvc exp save`: this run only
                        summary["failed"][run.name] = f"trained, but not recorded: {one_line(e)}"
                        echo(f"{run.name}: {summary['failed'][run.name]}")
                        continue
                    summary["done"].append(run.name)
                    summary.setdefault("nodes", {})[run.name] = node
                    echo(f"{run.name}: recorded as a DVC experiment (ran on node {node[:8]})")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        # The killed runs could not remove their scratch directories: once they are gone, this
        # machine's are (another node's go with the next run there).
        ray.wait(list(pending), num_returns=len(pending), timeout=10)
        atomic.clear_scratch(SCRATCH)
        raise Interrupted(
            f"interrupted; {len(summary['done'])} runs recorded, {sum(map(len, pending.values()))} not: "
            "the same command continues with those"
        ) from None
    if summary["failed"]:
        failed = list(summary["failed"])
        raise TrainingFailed(
            f"{len(failed)} of {len(todo)} runs failed ({', '.join(failed[:6])}{' ...' if len(failed) > 6 else ''}: "
            f"their reasons above); {len(summary['done'])} recorded; the same command runs the failed ones again"
        )
    return summary


LOST_RUN_RETRIES = 1
SCRATCH = "ffl-run-"  # a run's scratch directory in the worker's temporary folder: ffl-run-<pid>-*


def run_failure(e: Exception) -> str:
    """Why a run failed, in one line: its own error, or the loss of what ran it (Ray's own
    message for that is a paragraph)."""
    tries = f"on each of {1 + LOST_RUN_RETRIES} tries"
    if isinstance(e, ray.exceptions.NodeDiedError):
        return lost("node", tries)
    if isinstance(e, ray.exceptions.WorkerCrashedError):
        return lost("worker", tries)
    return one_line(e)


def task_groups(runs: list[Run], reproduce: ReproduceParams, have_gpus: bool) -> list[list[Run]]:
    """The Ray tasks to start: one run each, or a row's seeds together where they stack
    (pipeline.stacked.stacks)."""

    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = f"{run.table}/{run.row}" if stacks(run.params, reproduce, have_gpus) else run.name
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def longest_first(groups: list[list[Run]]) -> list[list[Run]]:
    """The tasks in order of their work (epochs x images x forward FLOPs x views), longest first:
    Ray starts them in that order, so the last ones to run are short and no worker idles long
    beside a long run at the end."""
    cost: dict[tuple[str, str], float] = {}

    def work(group: list[Run]) -> float:
        p = group[0].params
        if (group[0].table, group[0].row) not in cost:
            views = p.method_class.train_views(len(p.archs()), p.settings())
            cost[group[0].table, group[0].row] = flops_per_image(p) * views * p.train.epochs
        return cost[group[0].table, group[0].row] * (train_images(p) or 0) * len(group)

    return sorted(groups, key=work, reverse=True)
