"""`ffl tune`: a Ray Tune search with Optuna's sampler over the dimensions of `tune.space`.

Every trial is a training run of the pipeline's own `build_trainer` on the training split, scored
on the validation split, reporting each epoch (ASHA stops bad trials from those reports) with a
checkpoint, so a trial that Ray restarts or pauses continues where it was. The driver's state lives
under tune/ray, so an interrupted search continues with `ffl tune --resume`. Results land in tune/:
trials.csv (every trial's params and metrics), best_params.yaml (a whole params file),
best_overrides.txt (`-S` pairs for `dvc exp run`), summary.json and Optuna's plots; `--out` names
another folder (one per search: an FFL and a DML search side by side). ``tune.time_budget_min``
bounds a search in time: trials stop starting when it runs out and the finished ones are ranked.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

import ray
import ray.tune
import yaml

from ffl import atomic
from ffl.callbacks import Callback
from ffl.config_diff import described, differences, flatten
from ffl.engine import NonFiniteLoss
from ffl.errors import one_line
from pipeline.errors import Interrupted, TrainingFailed, UserError
from pipeline.params import Params, set_dotted, tune_metric, validate
from pipeline.signals import take_back_terminate

TUNE_DIR = Path("tune")
EXPERIMENT = "search"


# The schedulers' clock: epochs the trial has finished, reported by the trial itself (Ray's
# training_iteration counts reports, and a trial restored from its checkpoint counts again).
CLOCK = "epochs_done"
DIVERGED_SCORE = 100.0  # top-1 error (%) of a trial whose loss diverged: the worst, for the sampler


class ReportToTune(Callback):
    """Each epoch: a checkpoint and the epoch's metrics to Ray Tune."""

    def on_epoch_end(self, trainer, epoch, metrics):
        with tempfile.TemporaryDirectory() as d:
            atomic.torch_save(trainer.state_dict(epoch + 1), Path(d) / "last.pt")
            # The node, for a cluster's trials.csv (Ray's own node_ip is one for all simulated nodes).
            report = dict(metrics) | {CLOCK: epoch + 1, "node": ray.get_runtime_context().get_node_id()[:8]}
            ray.tune.report(report, checkpoint=ray.tune.Checkpoint.from_directory(d))


def trial(config: dict, raw: dict, data, metric: str) -> None:
    """One trial: the base params with the sampled values, trained and reported epoch by epoch."""
    import torch

    from pipeline.runtime import resolve_device
    from pipeline.stages.train import build_trainer

    p = validate(apply_config(raw, config))
    ctx = ray.tune.get_context()
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1) if ctx else 1
    torch.set_num_threads(max(1, int(cpus)))
    trainer = build_trainer(p, data, resolve_device(p.train.device), [ReportToTune()])
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:  # a restarted or resumed trial continues from its last epoch
        with checkpoint.as_directory() as d:
            trainer.load_checkpoint(Path(d) / "last.pt")
    try:
        trainer.fit()
    except NonFiniteLoss as e:
        # Ray retries a trial that raises; a divergence is deterministic, so the trial ends here,
        # failed with its reason. It reports the worst error there is, not NaN: Optuna records NaN
        # as a failed trial, which TPE ignores and would keep sampling the same region.
        ray.tune.report({metric: DIVERGED_SCORE, "diverged": str(e), CLOCK: e.epoch})


def apply_config(raw: dict, config: dict) -> dict:
    out = copy.deepcopy(raw)
    for key, value in config.items():
        set_dotted(out, key, value)
    return out


def trial_raw(params: Params, raw: dict) -> dict:
    """The base params every trial starts from, `tune.epochs` as the trial length (a whole params
    file: the tune section stays, it does not change a training run). A trial is one process on
    the resources of tune.resources: train.processes (DDP for `ffl train`) is 1 in its params."""
    base = copy.deepcopy(raw)
    if params.tune.epochs:
        set_dotted(base, "train.epochs", params.tune.epochs)
    set_dotted(base, "train.processes", 1)
    return base


def distributions(params: Params) -> dict:
    import optuna

    dists = {}
    for key, d in params.tune.dimensions(params.method.name).items():
        if d.type == "choice":
            dists[key] = optuna.distributions.CategoricalDistribution(d.values)
        elif d.type in ("int", "logint"):
            dists[key] = optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.type == "logint")
        else:
            dists[key] = optuna.distributions.FloatDistribution(d.low, d.high, log=d.type == "loguniform")
    return dists


def build_tuner(params: Params, raw: dict, data, storage: SearchStorage, resume: bool):
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    t = params.tune
    trainable = ray.tune.with_parameters(trial, raw=trial_raw(params, raw), data=data, metric=tune_metric(params))
    resources = {"cpu": t.resources.cpu, "gpu": t.resources.gpu}
    trainable = ray.tune.with_resources(trainable, resources)
    if resume:
        return ray.tune.Tuner.restore(
            storage.experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    epochs = t.epochs or params.train.epochs
    if t.scheduler.name == "asha":
        scheduler = ASHAScheduler(
            time_attr=CLOCK,
            max_t=epochs,
            grace_period=min(t.scheduler.grace_period, epochs),
            reduction_factor=t.scheduler.reduction_factor,
        )
    elif t.scheduler.name == "median":
        scheduler = MedianStoppingRule(time_attr=CLOCK, grace_period=t.scheduler.grace_period)
    else:
        scheduler = FIFOScheduler()
    sampler = (optuna.samplers.TPESampler if t.sampler == "tpe" else optuna.samplers.RandomSampler)(seed=t.seed)
    searcher = OptunaSearch(space=distributions(params), metric=tune_metric(params), mode="min", sampler=sampler)
    return ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            metric=tune_metric(params),
            mode="min",
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=t.trials,
            max_concurrent_trials=t.max_concurrent or None,
            time_budget_s=t.time_budget_min * 60 if t.time_budget_min else None,
        ),
        run_config=ray.tune.RunConfig(
            name=EXPERIMENT,
            storage_path=storage.root,
            failure_config=ray.tune.FailureConfig(max_failures=t.max_failures),
            # Two, not one: Ray's experiment snapshot may still name the previous checkpoint when
            # the driver dies, and --resume must find it on disk.
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
            callbacks=[Progress(tune_metric(params), t.trials)],
            verbose=0,
        ),
    )


class Progress(ray.tune.Callback):
    """One line per finished trial: done / running / pending, and the best value so far."""

    def __init__(self, metric: str, total: int):
        self.metric, self.total = metric, total
        self.best = None
        self.ended: set[str] = set()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, float) and math.isfinite(value):
            better = self.best is None or value < self.best
            self.best = value if better else self.best

    def _line(self, trials, trial, what):
        # The finishing trial's status is not updated yet when these hooks run: count it here.
        self.ended |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id}
        done = len(self.ended)
        running = sum(t.status == "RUNNING" and t.trial_id not in self.ended for t in trials)
        best = "-" if self.best is None else f"{self.best:.4g}"
        print(
            f"[tune] trial {trial.trial_id} {what}: {done}/{self.total} done, {running} running, "
            f"{self.total - done - running} pending; best {self.metric} so far {best}",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, "finished")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "failed")


# -- results -----------------------------------------------------------------------------------


def trial_rows(results, params: Params) -> list[dict]:
    t = params.tune
    rows = []
    epochs = t.epochs or params.train.epochs
    for i, r in enumerate(results):
        metrics = r.metrics or {}
        done = metrics.get(CLOCK, 0)
        if "diverged" in metrics:
            status = f"failed: {metrics['diverged']}"
        elif r.error is not None:
            status = f"failed: {one_line(r.error)[:300]}"
        else:
            status = "completed" if done >= epochs else "stopped early"
        row = {
            "trial": i,
            "trial_id": metrics.get("trial_id", r.path.rsplit("/", 1)[-1] if r.path else ""),
            "status": status,
            "epochs": done,
            "score": metrics.get(tune_metric(params), float("nan")),
            "node": metrics.get("node", ""),
        }
        row |= {k: (r.config or {}).get(k) for k in t.dimensions(params.method.name)}
        row |= {k: v for k, v in metrics.items() if k.startswith(("val/", "train/loss/total"))}
        rows.append(row)
    return rows


def changed_params(base: dict, ran: dict) -> dict[str, str]:
    """``{dotted key: value}`` for every param of ``ran`` that ``base`` (the params file the search
    started from) does not hold, values written as `dvc exp run -S` and `ffl train -S` both parse
    them (JSON: quoted strings, lists without spaces, so that `$(cat ...)` splits them whole)."""
    now = flatten(ran)
    return {
        key: json.dumps(now[key], separators=(",", ":"))
        for key, _, _ in differences(base, ran, exact_types=True)
        if key in now and not key.startswith("tune.")
    }


def scored_on(data) -> dict:
    """What the trials were scored on, said in every result: the validation split, never the test split."""
    n = len(data.splits["val"]) if "val" in data.splits else 0
    return {"split": "val", "images": n, "note": "the held-out validation split; the test split is not seen"}


def write_results(
    results,
    params: Params,
    raw: dict,
    out: Path = TUNE_DIR,
    base: dict | None = None,
    extra: dict | None = None,
) -> dict:
    """tune/ (or ``out``): trials.csv, summary.json (with ``extra``: what the trials were scored on,
    the wall time, why the search stopped), best_params.yaml, best_overrides.txt and the plots."""
    import csv
    import io

    t = params.tune
    rows = trial_rows(results, params)
    scored = [r for r in rows if not r["status"].startswith("failed") and math.isfinite(r["score"])]
    if not scored:
        # Nothing to rank: tune/ keeps the last search's results, a set that agrees with itself.
        reasons = sorted({r["status"] for r in rows})
        raise TrainingFailed(
            f"none of the {len(rows)} trials finished with a score ({'; '.join(reasons)[:300]}); "
            f"{out} keeps the results of the last search that did"
        )
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(out / "trials.csv", table.getvalue())
    summary = {
        "trials": len(rows),
        "completed": sum(r["status"] == "completed" for r in rows),
        "stopped_early": sum(r["status"] == "stopped early" for r in rows),
        "failed": sum(r["status"].startswith("failed") for r in rows),
    }
    best = min(scored, key=lambda r: r["score"])
    best_config = {k: best[k] for k in t.dimensions(params.method.name)}
    metric = tune_metric(params)
    summary |= {"best_trial": best["trial"], "best": {metric: best["score"]}, "best_params": best_config}
    summary |= extra or {}
    ran = apply_config(trial_raw(params, raw), best_config)  # exactly what the best trial trained
    pairs = changed_params(base if base is not None else raw, ran)
    atomic.write_text(
        out / "best_params.yaml",
        f"# What the best of {len(rows)} trials ran ({metric} = {best['score']:.4f}, on the validation split): "
        f"`ffl train -p {out}/best_params.yaml`.\n"
        f"# train.epochs is the trials' length (tune.epochs); the same as -S pairs: {out}/best_overrides.txt\n"
        + yaml.safe_dump(ran | {"tune": raw.get("tune", {})}, sort_keys=False),
    )
    atomic.write_text(out / "best_overrides.txt", " ".join(f"-S {k}={v}" for k, v in pairs.items()) + "\n")
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_plots(rows, params, out / "plots")
    return summary


def write_plots(rows: list[dict], params: Params, out: Path) -> None:
    """Optuna's history and importance plots, from a study rebuilt from the finished trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize")
    dists = distributions(params)
    for r in rows:
        if any(r[k] is None for k in dists):
            continue  # stopped by the time budget before it was given its values
        ok = not r["status"].startswith("failed") and math.isfinite(r["score"])
        study.add_trial(
            optuna.trial.create_trial(
                params={k: r[k] for k in dists},
                distributions=dists,
                value=r["score"] if ok else None,
                state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            )
        )
    out.mkdir(parents=True, exist_ok=True)
    draw(study, "optimization_history", tune_metric(params), out)
    complete = [tr for tr in study.trials if tr.state == optuna.trial.TrialState.COMPLETE]
    why = None
    if len(complete) >= 2:
        try:
            draw(study, "param_importances", tune_metric(params), out)
        except (ValueError, RuntimeError) as e:  # e.g. every trial sampled the same values
            why = str(e)
    else:
        why = f"{len(complete)} trial(s) scored; importances need at least 2"
    if why:
        atomic.write_text(out / "param_importances.txt", f"not computed: {why}\n")


def draw(study, plot: str, metric: str, out: Path) -> None:
    """One of Optuna's plots twice: a PNG (Optuna's matplotlib backend) for pages and reviews, and
    the interactive HTML, which loads plotly.js from its CDN instead of embedding its 4.8 MB, so
    that the results stay small enough to version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization as vis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = getattr(vis.matplotlib, f"plot_{plot}")(study, target_name=metric)
    fig = ax.figure
    fig.set_size_inches(8, 4.5)
    fig.tight_layout()
    fig.savefig(out / f"{plot}.png", dpi=100)
    plt.close(fig)
    getattr(vis, f"plot_{plot}")(study, target_name=metric).write_html(out / f"{plot}.html", include_plotlyjs="cdn")


# -- the command ---------------------------------------------------------------------------------


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
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    except ConnectionError as e:  # auto with no cluster on this machine (Ray's own message names flags)
        raise UserError(
            f"--address {address}: no running Ray cluster was found ({one_line(e).split('.')[0]}); "
            "start one with `ray start --head`, or leave --address out for a Ray of this machine alone"
        ) from None


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


class SearchStorage:
    """Where Ray Tune keeps a search (trial checkpoints, its state for --resume): tune/ray, or
    ``tune.storage``, a path every node of a cluster reaches (a shared filesystem) or a URI
    (s3://, gs://, ...). Read and written through pyarrow's filesystems, as Ray itself does, so one
    code path serves both; the results for people (trials.csv, best params) land in tune/ either way."""

    def __init__(self, root: str | None, out: Path = TUNE_DIR):
        import pyarrow.fs

        self.root = root if root and "://" in root else str(Path(root or out / "ray").resolve())
        try:
            self.fs, self.path = pyarrow.fs.FileSystem.from_uri(self.root)
        except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, OSError) as e:
            raise UserError(f"tune.storage: {root!r} is not a path or a storage URI pyarrow knows ({e})") from None
        self.experiment = f"{self.root.rstrip('/')}/{EXPERIMENT}"
        self.shown = f"{(root or str(out / 'ray')).rstrip('/')}/{EXPERIMENT}"  # as the user named it
        self.record = f"{self.path.rstrip('/')}/{EXPERIMENT}.params.json"  # what the search runs

    def __str__(self) -> str:
        return self.shown

    def has_search(self) -> bool:
        import pyarrow.fs

        info = self.fs.get_file_info(f"{self.path.rstrip('/')}/{EXPERIMENT}")
        return info.type != pyarrow.fs.FileType.NotFound

    def started_with(self) -> dict | None:
        import pyarrow.fs

        if self.fs.get_file_info(self.record).type == pyarrow.fs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self.record) as f:
            return json.loads(f.read().decode())

    def start(self, params: Params) -> None:
        """Discards an earlier search and records what this one runs."""
        import pyarrow.fs

        experiment = f"{self.path.rstrip('/')}/{EXPERIMENT}"
        if self.fs.get_file_info(experiment).type != pyarrow.fs.FileType.NotFound:
            self.fs.delete_dir(experiment)
        self.fs.create_dir(self.path, recursive=True)
        with self.fs.open_output_stream(self.record) as f:
            f.write((json.dumps(params.model_dump(mode="json"), indent=2) + "\n").encode())


def check_same_search(experiment, started_with: dict, now: dict) -> None:
    """A resumed search runs the params it started with: otherwise one table would rank trials of
    two configurations."""
    differ = differences(started_with, now)  # the same comparison as a resumed training's
    if differ:
        raise UserError(
            f"{experiment}: was started with other params ({described(differ)}); resume it with those, "
            "or start a new search with --fresh"
        )


def check_files_reach_every_node(data) -> None:
    """An image-file dataset travels to the trials as an index of paths: every node must see the
    images at the same place. Checked on each live node before any trial starts."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ffl.data import FileDataset

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


def tune(
    params: Params,
    raw: dict,
    address: str | None = None,
    resume: bool = False,
    fresh: bool = False,
    base: dict | None = None,
    out: Path = TUNE_DIR,
) -> dict:
    """The search. ``raw``: the params as the trials start from them (file + overrides); ``base``:
    the params file alone, which best_overrides.txt is relative to (default: ``raw``); ``out``: the
    results folder."""
    from pipeline.params import check_tune
    from pipeline.stages.prepare import load_prepared

    check_tune(params, raw)
    storage = SearchStorage(params.tune.storage, out)
    experiment = storage.shown
    if resume and not storage.has_search():
        raise UserError(f"{experiment}: no search to resume")
    if storage.has_search() and not resume and not fresh:
        raise UserError(f"{experiment}: an earlier search is there; --resume continues it, --fresh discards it")
    if resume and (started_with := storage.started_with()) is not None:
        check_same_search(experiment, started_with, params.model_dump(mode="json"))
    data = load_prepared(params)
    # Short trials checkpoint every few seconds; that is by design, not a bottleneck worth a warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        start_ray(address)
    check_resources(params)
    check_files_reach_every_node(data)
    if not resume:  # the earlier search is discarded only now, when the new one can start
        storage.start(params)
    tuner = build_tuner(params, raw, data, storage, resume)
    # SIGTERM (a scheduler pre-empting the job) stops the search as Ctrl-C does: Tune's own SIGINT
    # handler lets the running trials checkpoint and saves the search's state.
    take_back_terminate()
    started = time.monotonic()
    results = tuner.fit()
    wall = time.monotonic() - started
    extra = {"scored_on": scored_on(data), "wall_s": round(wall)}
    budget = params.tune.time_budget_min
    if results.num_terminated + results.num_errors < params.tune.trials:
        if budget is None or wall < budget * 60:
            # The results in the folder stay those of the last finished search.
            raise Interrupted(
                f"{experiment}: search interrupted, finished trials kept; `ffl tune --resume` continues it"
            )
        extra["stopped"] = (
            f"the time budget ({budget:g} min) ran out: {len(results)} of {params.tune.trials} trials ran"
        )
        print(f"[tune] {extra['stopped']}; ranking those", flush=True)
    return write_results(results, params, raw, out=out, base=base, extra=extra)
