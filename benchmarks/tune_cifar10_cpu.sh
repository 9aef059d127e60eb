#!/usr/bin/env bash
# Tuning on real images (issue #26): FFL's and DML's own settings searched on genuine CIFAR-10 at
# the cifar10-cpu recipe (configs/tables.yaml), scored on the held-out validation split, each
# search the same budget; then the best of each over three seeds as DVC experiments, beside the
# table's default runs. docs/results.md reports it. Run from the project's root, the CPU otherwise
# idle (the searches are timed). About 90 minutes on 2 cores, then about 50 for the seeds.
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"

ffl prepare -S data.source=cifar10 -S data.root=../shared/datasets  # the table's data, validation split held out
# One budget for both: 30 trials each (at most 50 minutes), ASHA over the 5-epoch trials (rungs at
# epochs 1 and 3), two trials at a time (one core each), Optuna's TPE from seed 0.
budget=(-S tune.trials=30 -S tune.time_budget_min=50 -S tune.scheduler.name=asha
        -S tune.scheduler.grace_period=1 -S tune.scheduler.reduction_factor=3)
# FFL: params.yaml's space (temperature, CE/EKD/FKD weights, ramp-up, fusion width and kernel,
# lr, weight decay), the ramp-up bounded by the 5-epoch run.
ffl tune --preset cifar10-cpu/ffl --out tune/cifar10-cpu-ffl --fresh "${budget[@]}" \
  -S tune.space.method.ffl.rampup_epochs.high=3
# DML: its own section of params.yaml's space (temperature, KL weight, ramp-up) and the same lr and
# weight decay, scored on its deployed ensemble (tune.metric: auto). (The recorded search named the
# same space and metric in full with -S, before params.yaml held DML's section: the same search.)
ffl tune --preset cifar10-cpu/dml --out tune/cifar10-cpu-dml --fresh "${budget[@]}" \
  -S tune.space.method.dml.rampup_epochs.high=3
# The defaults and the best of each over the table's three seeds, recorded as experiments of HEAD
# (commit first); the tuned runs are named <table>-<row>-<digest>-s<seed> beside the preset's.
ffl reproduce cifar10-cpu --rows ffl --rows dml
ffl reproduce cifar10-cpu --rows ffl $(cat tune/cifar10-cpu-ffl/best_overrides.txt)
ffl reproduce cifar10-cpu --rows dml $(cat tune/cifar10-cpu-dml/best_overrides.txt)
