# make repro: environment + `dvc repro` on the embedded dataset.  make test: environment + tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install repro test test-ordered test-fast test-adversarial lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins the tested set (torch and torchvision must be a matching pair).
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-* && touch $@

repro: install
	dvc repro
	dvc metrics show metrics/test.json

# Two workers, a test file each at a time (its Ray or DVC fixture is set up once): about 9 minutes
# on 2 cores instead of 13, one file's subprocesses and Ray start-ups overlapping the other's work.
# The simulated Ray cluster (marked alone) runs after, with nothing beside it. The tests run in a
# shuffled order (pytest-randomly; the seed is the first line of each run's output): SEED=<n> for
# another order, `make test-ordered` for the order they are written in. Each passes in any order.
SEED ?= 34
test: install
	@echo "test order: pytest-randomly, --randomly-seed=$(SEED)"
	pytest -q -n 2 --dist loadfile -m "not alone and not adversarial" -p randomly --randomly-seed=$(SEED)
	pytest -q -m alone -p randomly --randomly-seed=$(SEED)

test-ordered: install
	pytest -q -n 2 --dist loadfile -m "not alone and not adversarial" -p no:randomly
	pytest -q -m alone -p no:randomly

# The edit loop: everything but the end-to-end runs of real processes (marked slow: DVC, Ray,
# DDP, killed and resumed runs), under 2 minutes on 2 cores. CI runs `make test`.
test-fast: install
	pytest -q -n 2 --dist loadfile -m "not slow and not adversarial"

# The black-box sweeps of the command line (tests/sweeps: a hostile and a careless user, each case a
# test, run as a user without root's capabilities), about 25 minutes on 2 cores; not in `make test`.
test-adversarial: install
	pytest -q -m adversarial tests/sweeps -p no:randomly

lint: install
	ruff check .
	ruff format --check .

format: install
	ruff check --fix .
	ruff format .

bench: install
	ffl bench

clean:
	rm -rf data/prepared models checkpoints dvclive metrics
