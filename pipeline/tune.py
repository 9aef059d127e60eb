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

import json
import logging
import math
import os
import time
from pathlib import Path

import ray
import ray.tune

from ffl.config_diff import described, differences
from ffl.errors import one_line
from pipeline.dataset import load_prepared
from pipeline.errors import Interrupted, TrainingFailed, UserError
from pipeline.params import Params, check_tune, tune_metric
from pipeline.ray_cluster import check_files_reach_every_node, check_resources, lost, start_ray
from pipeline.runtime import check_writable
from pipeline.signals import take_back_terminate
from pipeline.trials import CLOCK, ReportToTune, distributions, trial, trial_raw  # noqa: F401
from pipeline.tune_results import TUNE_DIR, budget, scored_on, search_identity, write_results

EXPERIMENT = "search"


def build_tuner(params: Params, raw: dict, data, storage: SearchStorage, resume: bool):
    import optuna
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO lines ("A new study created") are not ffl's
    # Tune logs each failed trial's traceback; Progress says it in one line, and the traceback
    # stays in the trial's error.txt (Tune's own switch, read when the search starts).
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
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
            callbacks=[Progress(tune_metric(params), t.trials, t.max_failures)],
            verbose=0,
        ),
    )


class Progress(ray.tune.Callback):
    """One line per finished trial: done / running / pending, and the best value so far."""

    def __init__(self, metric: str, total: int, retries: int = 0):
        self.metric, self.total, self.retries = metric, total, retries
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
        self._line(trials, trial, f"failed ({trial_failure(last_error(trial))})")

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(
            f"[tune] trial {trial.trial_id} stopped ({trial_failure(last_error(trial))}); it goes on from its "
            f"last checkpoint (retry {trial.run_metadata.num_failures} of {self.retries}, tune.max_failures)",
            flush=True,
        )


def last_error(trial) -> str | None:
    """The trial's latest failure as Tune recorded it (its error.txt on this machine, before the
    storage has a copy; failures add up in it, one "Failure #" block each)."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return None
    return "Failure #" + Path(path).read_text().split("Failure #")[-1]


def trial_failure(error: str | None) -> str:
    """Why a trial stopped, in one line, from the error Tune recorded for it (its error.txt)."""
    if not error:
        return "no reason recorded"
    if "its node has died" in error:
        return lost("node")
    if "The actor died unexpectedly" in error:  # Ray's own words for a lost worker process
        return lost("worker")
    return one_line(RuntimeError(error))


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
        self.clock = f"{self.path.rstrip('/')}/{EXPERIMENT}.wall_s"  # its wall time over every sitting

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

    def elapsed(self) -> float:
        """Seconds the search has run in earlier sittings (0 for a new one). Ray keeps the time
        bound's remaining budget across a resume; this keeps the wall time that results report."""
        import pyarrow.fs

        if self.fs.get_file_info(self.clock).type == pyarrow.fs.FileType.NotFound:
            return 0.0
        with self.fs.open_input_stream(self.clock) as f:
            return float(f.read().decode() or 0)

    def set_elapsed(self, seconds: float) -> None:
        with self.fs.open_output_stream(self.clock) as f:
            f.write(f"{seconds:.1f}\n".encode())

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

    check_tune(params, raw)
    if resume and fresh:
        raise UserError("--resume and --fresh: one continues the earlier search, the other discards it; give one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; the results need a folder (give another --out)")
    storage = SearchStorage(params.tune.storage, out)
    # Both folders are written by the search: found out now, not from inside Ray's storage layer.
    check_writable(out, *([Path(storage.root)] if "://" not in storage.root else []))
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
    try:
        tuner = build_tuner(params, raw, data, storage, resume)
    except Exception as e:  # a search folder Tune cannot read back (damaged, or not Tune's)
        if not resume:
            raise
        raise UserError(
            f"{experiment}: the search there cannot be resumed ({one_line(e)}); --fresh discards it and starts over"
        ) from None
    # SIGTERM (a scheduler pre-empting the job) stops the search as Ctrl-C does: Tune's own SIGINT
    # handler lets the running trials checkpoint and saves the search's state.
    take_back_terminate()
    # Tune logs "Trials did not complete: [...]" at ERROR after a search with failed trials: Progress
    # has said each one, with its reason.
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    before = storage.elapsed() if resume else 0.0
    started = time.monotonic()
    try:
        results = tuner.fit()
    finally:  # Ctrl-C and SIGTERM end fit() normally; only a hard kill loses this sitting's time
        wall = before + time.monotonic() - started
        if storage.started_with() is not None:
            storage.set_elapsed(wall)
    if storage.started_with() is None:  # deleted under the running search (Ray makes its own files again)
        raise TrainingFailed(
            f"{experiment}: deleted while the search ran, so its trials could not keep their checkpoints and "
            f"the search cannot be resumed; `ffl tune --fresh` runs it again ({out} keeps no partial results)"
        )
    extra = {"scored_on": scored_on(data), "wall_s": round(wall), "budget": budget(params)}
    extra["search"] = search_identity(params)
    extra["space"] = {k: d.model_dump(mode="json") for k, d in params.tune.dimensions(params.method.name).items()}
    bound = params.tune.time_budget_min
    extra["ended"] = f"all {params.tune.trials} trials ran"
    if results.num_terminated + results.num_errors < params.tune.trials:
        if bound is None or wall < bound * 60:
            # The results in the folder stay those of the last finished search.
            raise Interrupted(
                f"{experiment}: search interrupted, finished trials kept; `ffl tune --resume` continues it"
            )
        extra["ended"] = extra["stopped"] = (
            f"the time budget ({bound:g} min) ran out: {len(results)} of {params.tune.trials} trials ran"
        )
        print(f"[tune] {extra['stopped']}; ranking those", flush=True)
    return write_results(results, params, raw, out=out, base=base, extra=extra)
