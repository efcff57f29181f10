# The loyalty platform's one entry point. Everything installs itself on first use:
#   make run    the whole platform on embedded PostgreSQL + Redis
#   make test   the whole suite (starts its own PostgreSQL and Redis)
#   make lint   ruff, ruff format --check, mypy, buf lint
#   make bench  benchmarks (medians of 3 runs; minutes, not part of make test)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# `make proto-breaking` compares the contracts with this git ref (override with AGAINST=...).
AGAINST ?= .git\#branch=main,subdir=protos
# The released v1 contract; CI checks every change against it (see `make proto-baseline`).
BASELINE := protos/baseline/loyalty-v1.binpb

.PHONY: install proto run test lint format proto-breaking proto-breaking-baseline proto-baseline bench load clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required (set PYTHON=...)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

proto: install
	$(BIN)/python -m shared.codegen

run: proto
	$(BIN)/loyalty run

test: proto
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd protos && ../$(BIN)/buf lint

bench: proto
	$(BIN)/python -m loadtests.bench_calibration --runs 3 --seconds 5 --in-flight 64
	$(BIN)/python -m loadtests.bench_wallet --runs 3 --seconds 5
	$(BIN)/python -m loadtests.bench_ledger_floor --runs 3 --seconds 5
	$(BIN)/python -m loadtests.bench_cards --runs 3 --seconds 5
	$(BIN)/python -m loadtests.bench_processing --runs 3 --seconds 5 --members 10000 --py-spy .data/bench-processing

# The whole stack on .data/load (the seeded data set is kept there and reused), locust headless
# for LOAD_TIME with LOAD_USERS users, reports in loadtests/reports/locust/; fails on any failure.
LOAD_TIME  ?= 60s
LOAD_USERS ?= 10
load: proto
	$(BIN)/python -m loadtests.locust --run-time $(LOAD_TIME) --users $(LOAD_USERS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto-breaking: install
	cd protos && ../$(BIN)/buf breaking --against '../$(AGAINST)'

# CI: a clean clone of main compared with main could never fail, so CI compares with the
# committed baseline image instead. A deliberate breaking change regenerates the baseline in
# the same commit (make proto-baseline), where a reviewer sees it.
proto-breaking-baseline: install
	cd protos && ../$(BIN)/buf breaking --against '../$(BASELINE)'

proto-baseline: install
	cd protos && ../$(BIN)/buf build --exclude-source-info -o '../$(BASELINE)'

clean:
	rm -rf $(VENV) shared/gen .data .pytest_cache .mypy_cache .ruff_cache
