# The loyalty platform's one entry point. Everything installs itself on first use:
#   make run    the whole platform on embedded PostgreSQL + Redis
#   make test   the whole suite (starts its own PostgreSQL and Redis)
#   make lint   ruff, ruff format --check, mypy, buf lint
#   make bench  benchmarks (medians of 3 runs; minutes, not part of make test)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# buf breaking compares the contracts with this git ref (override: make proto-breaking AGAINST=...).
AGAINST ?= .git\#branch=main,subdir=protos

.PHONY: install proto run test lint format proto-breaking bench clean

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

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

proto-breaking: install
	cd protos && ../$(BIN)/buf breaking --against '../$(AGAINST)'

clean:
	rm -rf $(VENV) shared/gen .data .pytest_cache .mypy_cache .ruff_cache
