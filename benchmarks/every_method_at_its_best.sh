#!/usr/bin/env bash
# "Every method at its best" (issue #31): every row of cifar10-cpu (configs/tables.yaml) searched
# with the table's one budget (its `search:` entry: 20 trials, at most 35 minutes, ASHA, TPE from
# seed 0), then every row at its defaults and at its best params over the table's three seeds, and
# the report that sets them side by side. Run from the project's root with the CPU otherwise idle
# (the searches are timed): about 5 hours of searches and 4 of runs on 2 cores. Every command
# continues where an interrupted sitting stopped; commit tune/ and reports/ after each sitting
# (reports/runs/ keeps the runs a report was made from, for the next clone).
set -euo pipefail
export PATH="$PWD/.venv/bin:$PATH"

ffl prepare -S data.source=cifar10 -S data.root=../shared/datasets  # the table's data, validation split held out
ffl tune --preset cifar10-cpu            # every row into tune/cifar10-cpu/<row>/, finished rows left alone
ffl reproduce cifar10-cpu                # the defaults: <row>-s<seed>
ffl reproduce cifar10-cpu --tuned        # each row's best_overrides.txt on top: <row>-tuned-s<seed>
ffl report cifar10-cpu                   # reports/cifar10-cpu.*: the table at the papers' settings
ffl report cifar10-cpu --tuned           # reports/cifar10-cpu-tuned.*: default and tuned side by side
