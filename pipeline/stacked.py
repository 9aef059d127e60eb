"""A row's seeds trained as one model inside `ffl reproduce` (ffl.stacked): the runs are built as
each would be built alone (its seed's initialisation, data order and augmentation: the stages'
own build_trainer), trained together, and handed back one by one, to be finished, evaluated and
exported as a run of their own is."""

from __future__ import annotations

import torch

from ffl.data import Dataset
from ffl.stacked import StackedBatches, StackedEval, StackedRuns, StackedTrainer, run_history, stack_refusal, unstack
from pipeline.params import Params
from pipeline.params.schema import ReproduceParams
from pipeline.run import build_trainer


def stacks(params: Params, reproduce: ReproduceParams, have_gpus: bool) -> bool:
    """Whether a row with these params trains its seeds as one model: ``reproduce.stack_seeds``
    (auto: on GPUs, where one run leaves the chip idle), one process per run, a method that stacks."""
    wanted = reproduce.stack_seeds is True or (reproduce.stack_seeds == "auto" and have_gpus)
    return wanted and params.train.processes == 1 and stack_refusal(params.method_class, params.settings()) is None


def train_stacked(runs: list[Params], data: Dataset, device: torch.device) -> tuple[list, list[list[dict]]]:
    """Trains the runs (one row, several seeds) as one model; returns each run's method, trained,
    and its epochs' metrics, as it would have them trained alone."""
    trainers = [build_trainer(p, data, device) for p in runs]
    first = trainers[0]
    model = StackedRuns([t.method for t in trainers])
    val = StackedEval(first.val_loader, len(runs)) if first.val_loader is not None else None
    batches = StackedBatches([t.train_loader for t in trainers])
    history = StackedTrainer(model, batches, first.config, val).fit()
    methods = unstack(model, [t.method for t in trainers])
    return methods, [run_history(history, i) for i in range(len(runs))]
