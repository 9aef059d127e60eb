"""What a trial of `ffl tune` is: the base params with the values Optuna sampled (the search
space as Optuna's distributions), trained by the pipeline's own `build_trainer` and reported to
Ray Tune epoch by epoch on the epochs-done clock, with a checkpoint; a diverged trial scores the worst."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import ray
import ray.tune

from ffl import atomic
from ffl.callbacks import Callback
from ffl.engine import NonFiniteLoss
from pipeline.params import Params, set_dotted, validate
from pipeline.run import build_trainer
from pipeline.runtime import resolve_device

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
