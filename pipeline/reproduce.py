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

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import AfterValidator, Field, StringConstraints, ValidationError, model_validator

from ffl.errors import one_line
from pipeline.errors import Interrupted, ParamsError, TrainingFailed, UserError
from pipeline.params import Params, apply_overrides, read_yaml, validate
from pipeline.params.base import Section
from pipeline.params.schema import ReproduceParams

TABLES = Path("configs/tables.yaml")
# What `ffl reproduce --dry-run` estimates from: each method's measured step (`ffl bench --methods`).
THROUGHPUT = Path("configs/gpu_throughput.yaml")
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167}


# Table and row names make experiment names (git refs) and report file names: plain words only.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


def _no_seed(changes: list[str]) -> list[str]:
    if any(c.partition("=")[0].strip() == "seed" for c in changes):
        raise ValueError("seed is set by `ffl reproduce --seeds`, not by a table or a row")
    return changes


class Row(Section):
    set: Annotated[list[str], AfterValidator(_no_seed)] = Field(default_factory=list)
    # metric of metrics/test.json (top1_err.fused) -> the paper's number; empty in a table of our own
    paper: dict[str, float] = Field(default_factory=dict)


class Table(Section):
    title: str
    base: str
    set: Annotated[list[str], AfterValidator(_no_seed)] = Field(default_factory=list)
    rows: dict[Annotated[str, StringConstraints(pattern=NAME)], Row] = Field(min_length=1)
    # Rows without the paper's numbers report these metrics (``deployed``: the classifier the row's
    # method deploys) and are compared with the ``compare`` row's deployed classifier.
    metrics: list[str] = Field(default_factory=lambda: ["top1_err.deployed", "top1_err.sub_mean"])
    compare: str | None = None

    @model_validator(mode="after")
    def _comparable(self):
        for key in self.metrics:
            if key.partition(".")[0] not in ("top1_err", "top5_err") or not key.partition(".")[2]:
                raise ValueError(f"metrics: {key!r} is not top1_err.<classifier> or top5_err.<classifier>")
        if self.compare is not None and self.compare not in self.rows:
            raise ValueError(f"compare: {self.compare!r} is not one of its rows ({', '.join(self.rows)})")
        if self.compare is None and any(not row.paper for row in self.rows.values()):
            raise ValueError("rows without paper numbers are compared with a row of the table: name it in compare")
        return self


def load_tables(path: Path = TABLES) -> dict[str, Table]:
    raw = read_yaml(path)
    tables = {}
    for name, table in raw.items():
        if not re.match(NAME, str(name)):
            raise ParamsError(f"{path}: {name}", "a table's name is a plain word (letters, digits, - and _)")
        try:
            tables[str(name)] = Table.model_validate(table)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in (name, *err["loc"]))
            raise ParamsError(f"{path}: {where}", err["msg"]) from None
    return tables


def pick(tables: dict[str, Table], name: str, rows: list[str] | None) -> tuple[Table, list[str]]:
    if name not in tables:
        raise UserError(f"no table {name!r}; the tables are {', '.join(tables)}")
    table = tables[name]
    unknown = [r for r in rows or () if r not in table.rows]
    if unknown:
        raise UserError(f"--rows: {name} has no row {unknown[0]!r}; its rows are {', '.join(table.rows)}")
    return table, list(rows or table.rows)


def row_raw(table: Table, row: str, overrides: list[str] = ()) -> dict:
    """The whole params file of a row: the table's base, its set, the row's set, then ``overrides``."""
    return apply_overrides(read_yaml(table.base), [*table.set, *table.rows[row].set, *overrides])


def identity(raw: dict) -> dict | None:
    """What makes two runs the same row: their run config without the seed (None if invalid), by
    the rule a resumed run uses to recognise its checkpoint (``pipeline.stages.train.run_config``)."""
    from pipeline.stages.train import run_config

    try:
        cfg = run_config(validate(raw))
    except UserError:
        return None
    cfg.pop("seed")
    return cfg


@dataclass(frozen=True)
class Run:
    table: str
    row: str
    seed: int
    raw: dict
    params: Params
    variant: str = ""  # set when the plain name is taken by a run of other params (sort_out)

    @property
    def name(self) -> str:  # the DVC experiment: <table>-<row>[-<variant>]-s<seed>
        return "-".join([self.table, self.row, *([self.variant] if self.variant else []), f"s{self.seed}"])


def plan(tables, name: str, rows: list[str] | None, seeds: list[int], overrides: list[str] = ()) -> list[Run]:
    """Every (row, seed) run of a table, its params validated (a bad row stops before any run)."""
    table, rows = pick(tables, name, rows)
    runs = []
    for row in rows:
        for seed in seeds:
            raw = apply_overrides(row_raw(table, row, overrides), [f"seed={seed}"])
            try:
                params = validate(raw)
            except UserError as e:
                raise UserError(f"{name}.{row}: {e}") from None
            if seed == seeds[0]:
                check_paper_metrics(f"{name}.{row}", table.rows[row].paper, params)
            runs.append(Run(name, row, seed, raw, params))
    return runs


def resolve_metric(key: str, params: Params) -> str:
    """``top1_err.deployed`` as the classifier the row's method deploys (``top1_err.fused`` for FFL);
    other keys as they are."""
    kind, _, clf = key.partition(".")
    if clf == "deployed":
        return f"{kind}.{params.method_class.deployed(len(params.archs()), params.settings())}"
    return key


def row_metrics(table: Table, row: str, params: Params) -> list[str]:
    """What a row reports: the paper's metrics, or the table's ``metrics`` that its method has."""
    if table.rows[row].paper:
        return list(table.rows[row].paper)
    available = reported_classifiers(params)
    return [m for m in (resolve_metric(k, params) for k in table.metrics) if m.partition(".")[2] in available]


def reported_classifiers(params: Params) -> list[str]:
    from pipeline.params import method_outputs

    return method_outputs(params) + (["sub_mean"] if len(params.archs()) > 1 else [])


def check_paper_metrics(where: str, paper: dict[str, float], params: Params) -> None:
    """Every number of the paper names a metric the row's runs report (or the report could never
    fill it in)."""
    classifiers = reported_classifiers(params)
    for key in paper:
        kind, _, clf = key.partition(".")
        if kind not in ("top1_err", "top5_err") or clf not in classifiers:
            raise UserError(
                f"{where}.paper.{key}: not a metric its runs report (top1_err or top5_err of {', '.join(classifiers)})"
            )


# -- the estimate of a dry run -----------------------------------------------------------------


def train_images(p: Params) -> int | None:
    d = p.data
    if d.source == "shapes":
        n = d.shapes.train_per_class * 10
    elif d.source in TRAIN_IMAGES:
        n = TRAIN_IMAGES[d.source]
    else:
        return None
    return round(n * (1 - d.split_fraction()))


def flops_per_image(p: Params) -> float:
    """Forward FLOPs of the run's whole method (every sub-network, the fusion) on one image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ffl.methods import build_method
    from pipeline.params import method_spec

    classes = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}.get(p.data.source, 10)
    size = p.data.files.image_size if p.data.source in ("imagenet", "imagefolder") else 32
    method = build_method(method_spec(p, classes)).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        method(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


class Throughput(Section):
    gpu: str
    date: str
    torch: str
    batch_size: int
    images_per_s: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Estimate:
    hours: float
    basis: str  # "measured" or what it was scaled from


def estimate_hours(runs: list[Run], path: Path = THROUGHPUT) -> tuple[dict[str, Estimate | None], Throughput]:
    """GPU hours per run: the measured images/s of its method and networks where there is one;
    else a measured figure (the same method's, or FFL's) scaled by the ratio of forward FLOPs."""
    try:
        measured = Throughput.model_validate(read_yaml(path))
    except ValidationError as e:
        err = e.errors()[0]
        raise ParamsError(f"{path}: {'.'.join(map(str, err['loc']))}", err["msg"]) from None
    ref_flops: dict[tuple[str, str], float] = {}
    flops: dict[tuple[str, str], float] = {}  # a row's seeds run the same network: counted once
    out: dict[str, Estimate | None] = {}
    for run in runs:
        images = train_images(run.params)
        if images is None:
            out[run.name] = None
            continue
        p = run.params
        figures = measured.images_per_s.get(p.method.name, {})
        archs = p.archs()
        exact = len(set(archs)) == 1 and len(archs) == p.method_class.default_subnets and archs[0] in figures
        if exact and p.train.batch_size == measured.batch_size and p.data.source.startswith("cifar"):
            rate, basis = figures[archs[0]], "measured"
        else:
            method, figures = (p.method.name, figures) if figures else ("ffl", measured.images_per_s["ffl"])
            arch = "resnet32" if "resnet32" in figures else next(iter(figures))
            if (method, arch) not in ref_flops:
                ref_flops[method, arch] = flops_per_image(reference_params(method, arch))
            if (run.table, run.row) not in flops:
                flops[run.table, run.row] = flops_per_image(p)
            rate = figures[arch] * ref_flops[method, arch] / flops[run.table, run.row]
            basis = f"scaled from {method} {arch}"
        out[run.name] = Estimate(p.train.epochs * images / rate / 3600, basis)
    return out, measured


def reference_params(method: str, arch: str) -> Params:
    """The params of a measured figure: the method at its default size, CIFAR-100."""
    sets = ["data.source=cifar100", f"method.name={method}", f"model.arch={arch}", "model.subnets=auto"]
    return validate(apply_overrides(read_yaml("params.yaml"), [*sets, "model.archs=null", "model.shared=auto"]))


# -- running -----------------------------------------------------------------------------------


OUTPUTS = ("models", "metrics", "plots", "dvclive")  # every stage's, prepare's aside (made where recorded)


def execute(raw: dict, data_root: str, threads: float) -> tuple[dict[str, bytes], str]:
    """One run, on whichever worker Ray chose: the stages in a scratch directory (prepare, train,
    evaluate, export, as `dvc repro` runs them); the outputs and the node back."""
    import ray
    import torch

    from pipeline.stages.deploy import export
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.prepare import prepare
    from pipeline.stages.train import train

    torch.set_num_threads(max(1, int(threads)))
    params = validate(raw)
    scratch = Path(tempfile.mkdtemp(prefix="ffl-run-"))
    try:
        with working_directory(scratch):
            params = link_data_root(params, data_root)
            prepare(params)
            train(params, progress=False)
            evaluate(params)
            export()
            node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
            return {str(f): f.read_bytes() for f in output_files()}, node
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def execute_stacked(raws: list[dict], data_root: str, threads: float) -> tuple[list[dict[str, bytes]], str]:
    """One row's runs (its seeds) trained as one model (pipeline.stacked), then each finished,
    evaluated and exported in a scratch directory of its own, as ``execute`` does for one run."""
    import ray
    import torch

    from pipeline import paths
    from pipeline.callbacks import write_curves
    from pipeline.runtime import ensure_writable, resolve_device
    from pipeline.stacked import train_stacked
    from pipeline.stages.deploy import export
    from pipeline.stages.evaluate import evaluate
    from pipeline.stages.prepare import load_prepared, prepare
    from pipeline.stages.train import finish_run

    torch.set_num_threads(max(1, int(threads)))
    scratch = Path(tempfile.mkdtemp(prefix="ffl-runs-"))
    try:
        dirs = [scratch / f"run{i}" for i in range(len(raws))]
        runs = []
        for d, raw in zip(dirs, raws):
            d.mkdir()
            with working_directory(d):
                runs.append(link_data_root(validate(raw), data_root))
        with working_directory(dirs[0]):
            prepare(runs[0])  # one dataset for all: the seeds share the data params
            data = load_prepared(runs[0])
            device = resolve_device(runs[0].train.device)
            methods, histories = train_stacked(runs, data, device)
        results = []
        for d, params, method, history in zip(dirs, runs, methods, histories):
            with working_directory(d):
                if d != dirs[0]:
                    Path("data").symlink_to(dirs[0] / "data")
                ensure_writable(paths.CHECKPOINTS, paths.DVCLIVE.parent)
                write_curves(history, paths.LIVE)
                finish_run(method, params, data)
                evaluate(params)
                export()
                results.append({str(f): f.read_bytes() for f in output_files()})
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
        return results, node
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def output_files() -> list[Path]:
    files = []
    for out in map(Path, OUTPUTS):
        files += [out] if out.is_file() else sorted(f for f in out.rglob("*") if f.is_file())
    return files


def link_data_root(params: Params, data_root: str) -> Params:
    """The params to run with here, their dataset at ``data_root`` (the one the driver found; on a
    cluster: the same path on every node, or a shared mount). Where the prepared data records its
    root (image-file indexes), ``data.root`` keeps its spelling and becomes a link to the dataset in
    this (scratch) directory; elsewhere (CIFAR, whose files are checked by their sums) the params
    simply point at it, which also serves a root outside the project (../shared/datasets)."""
    if "data.root" not in params.data.provenance():
        return params.model_copy(update={"data": params.data.model_copy(update={"root": data_root})})
    root = Path(params.data.root)
    if not root.is_absolute():
        root.parent.mkdir(parents=True, exist_ok=True)
        if not root.exists() and not root.is_symlink():
            os.symlink(data_root, root)
    return params


def git(*args: str, cwd: Path | str = ".") -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"git {' '.join(args)}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else 'failed'}")
    return proc.stdout


def dvc(*args: str, cwd: Path | str = ".") -> str:
    # DVC of this environment, whatever PATH holds.
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.startswith("ERROR")] or ["failed"]
        raise UserError(f"dvc {' '.join(args)}: {lines[-1]}")
    return proc.stdout


CODE = ("ffl", "pipeline", "dvc.yaml", "configs", "pyproject.toml")


def check_repository() -> None:
    """Runs are recorded against HEAD: the code they ran must be HEAD's."""
    if not Path(".dvc").is_dir() or not Path(".git").exists():
        raise UserError("ffl reproduce runs in the project's git + DVC repository (its root)")
    changed = [line for line in git("status", "--porcelain", "--", *CODE).splitlines() if line.strip()]
    if changed:
        first = changed[0][3:]  # after the two status letters and a space
        raise UserError(
            f"uncommitted changes ({first} ...): every run is recorded as an experiment of HEAD, "
            "so the code it runs must be HEAD's; commit or stash them first"
        )


def experiments(all_commits: bool = True) -> list[dict]:
    """``[{"name", "params": raw params, "metrics": metrics/test.json}]`` of every DVC experiment of
    every commit (`dvc exp show --json --all-commits`), or of HEAD's."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"dvc exp show: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
    found = []
    for baseline in json.loads(proc.stdout or "[]"):
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params = (data.get("params") or {}).get("params.yaml", {}).get("data")
                metrics = (data.get("metrics") or {}).get("metrics/test.json", {}).get("data")
                if params and metrics:
                    found.append({"name": rev.get("name") or rev.get("rev"), "params": params, "metrics": metrics})
    return found


def run_key(raw: dict) -> str:
    """A run's params as reproduce tells runs apart: its identity and its seed."""
    return json.dumps([identity(raw), raw.get("seed")], sort_keys=True, default=str)


def recorded() -> dict[str, str]:
    """The experiments recorded at HEAD, name -> run_key. A run is done when its params are there,
    whatever the experiment's name."""
    return {e["name"]: run_key(e["params"]) for e in experiments(all_commits=False)}


def sort_out(runs: list[Run], done: dict[str, str]) -> tuple[list[Run], dict[str, str]]:
    """The runs still to do, and the done ones (row's run name -> the experiment that holds it).
    A run whose name HEAD already holds with other params (the row with other -S: a tuned row
    beside its preset) is named with a digest of its params after the row, so that recording it
    never replaces the other experiment."""
    holder = {k: name for name, k in done.items()}
    todo, skipped = [], {}
    for run in runs:
        k = run_key(run.raw)
        if k in holder:
            skipped[run.name] = holder[k]
            continue
        if run.name in done:
            digest = hashlib.sha1(json.dumps(identity(run.raw), sort_keys=True, default=str).encode()).hexdigest()
            run = dataclasses.replace(run, variant=digest[:6])
        todo.append(run)
    return todo, skipped


@contextlib.contextmanager
def recorder():
    """``record(run, files)``, saving each run as a DVC experiment of HEAD from a git worktree that
    shares this repository's refs and DVC cache (the user's workspace is never touched)."""
    repo = Path.cwd()
    cache = dvc("cache", "dir").strip()
    git("worktree", "prune")
    tree = Path(tempfile.mkdtemp(prefix="ffl-reproduce-"))
    git("worktree", "add", "--detach", "--force", str(tree), "HEAD")
    try:
        dvc("cache", "dir", "--local", str(Path(cache).resolve()), cwd=tree)

        def record(run: Run, files: dict[str, bytes]) -> None:
            from ffl.data import prepared_provenance
            from pipeline.stages.prepare import prepare

            git("checkout", "--", ".", cwd=tree)
            git("clean", "-fdq", cwd=tree)  # ignored outputs (data/) stay until replaced
            for out in OUTPUTS:
                target = tree / out
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            for rel, content in files.items():
                (tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (tree / rel).write_bytes(content)
            (tree / "params.yaml").write_text(yaml.safe_dump(run.raw, sort_keys=False))
            # prepare's output, for dvc.lock: deterministic from the data params, made here once.
            with working_directory(tree):
                here = link_data_root(run.params, str((repo / run.params.data.root).resolve()))
                if prepared_provenance("data/prepared") != run.params.data.provenance():
                    prepare(here)
            (tree / "checkpoints").mkdir(exist_ok=True)  # train's persistent output, empty once a run finished
            dvc("commit", "-f", cwd=tree)
            dvc("exp", "save", "-f", "-n", run.name, "-I", "dvclive", "-I", "plots", "-I", "metrics", cwd=tree)

        yield record
    finally:
        with contextlib.suppress(UserError):
            git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)


@contextlib.contextmanager
def working_directory(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def reproduce(runs: list[Run], params: Params, address: str | None = None, echo=print) -> dict:
    """Runs what is not recorded yet; ``{"done": [...], "skipped": [...], "failed": {name: reason}}``."""
    import ray

    check_repository()
    todo, skipped = sort_out(runs, recorded())
    summary = {"done": [], "skipped": list(skipped.values()), "failed": {}}
    for name in summary["skipped"]:
        echo(f"{name}: recorded already (dvc exp show); skipped")
    if not todo:
        return summary
    if not ray.is_initialized():
        from pipeline.tune import start_ray

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
        task = execute_stacked if len(group) > 1 else execute
        remote = ray.remote(task).options(num_cpus=r.cpus_per_run * n, num_gpus=gpus, max_retries=0)
        raws = [run.raw for run in group] if len(group) > 1 else group[0].raw
        pending[remote.remote(raws, root, r.cpus_per_run)] = group
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
                        summary["failed"][run.name] = one_line(e)
                        echo(f"{run.name}: failed: {summary['failed'][run.name]}")
                    continue
                for run, outputs in zip(group, files if len(group) > 1 else [files], strict=True):
                    record(run, outputs)
                    summary["done"].append(run.name)
                    summary.setdefault("nodes", {})[run.name] = node
                    echo(f"{run.name}: recorded as a DVC experiment (ran on node {node[:8]})")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
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


def task_groups(runs: list[Run], reproduce: ReproduceParams, have_gpus: bool) -> list[list[Run]]:
    """The Ray tasks to start: one run each, or a row's seeds together where they stack
    (pipeline.stacked.stacks)."""
    from pipeline.stacked import stacks

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


def missing_data(params: Params, root: Path) -> str | None:
    """Why the run's dataset is not at ``root`` (a quick look, no checksums), or None."""
    d = params.data
    if d.source == "shapes":
        return None
    if d.source in TRAIN_IMAGES and d.source != "imagenet":
        from ffl.data import DatasetNotFound
        from ffl.data.cifar import find_form

        try:
            find_form(d.source, root)
        except DatasetNotFound as e:
            return str(e)
        return None
    return None if root.is_dir() else f"{d.source}: data.root {root} is not a folder"


def dry_run(runs: list[Run], echo=print) -> dict:
    roots = {(r.params.data.source, r.params.data.root) for r in runs}
    missing = {}
    for source, root in sorted(roots):
        params = next(r.params for r in runs if (r.params.data.source, r.params.data.root) == (source, root))
        if (why := missing_data(params, Path(root))) is not None:
            missing[f"{source} at {root}"] = why
    for where, why in missing.items():
        echo(f"data missing ({where}): {why}")
    hours, measured = estimate_hours(runs)
    _, done = sort_out(runs, recorded()) if Path(".dvc").is_dir() else ([], {})
    for run in runs:
        e = hours[run.name]
        state = (
            f"recorded ({done[run.name]})"
            if run.name in done
            else f"~{e.hours:.2f} GPU h ({e.basis})"
            if e
            else "unknown size"
        )
        echo(f"{run.name:48s} {run.params.method.name:8s} {'+'.join(run.params.archs()):28s} {state}")
    left = [hours[r.name].hours for r in runs if r.name not in done and hours[r.name] is not None]
    echo(
        f"{len(runs)} runs, {len(runs) - len(left)} recorded or unknown; ~{sum(left):.1f} GPU hours left, from "
        f"each method's step measured by ffl bench on an {measured.gpu} ({measured.date}, {THROUGHPUT}) without "
        "torch.compile or stacked seeds (docs/benchmarks.md: both shorten it), evaluation not included"
    )
    return {
        "runs": [r.name for r in runs],
        "gpu_hours": {k: v and v.hours for k, v in hours.items()},
        "missing_data": missing,
    }
