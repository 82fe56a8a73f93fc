# The two commands of the README: `make test` and `make repro`. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: test test-slow repro lint bench clean-results help

help:
	@echo "make test   - create .venv if missing, install the pinned environment, run the test suite"
	@echo "make repro  - create .venv if missing, run the whole pipeline on the embedded default"
	@echo "make lint   - ruff + snakemake --lint"
	@echo "make bench  - the benchmarks in benchmarks/ (writes results/benchmarks/*.json)"

# Re-installs when the pinned list or the package metadata changes.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# pytest's own exit codes pass through: 5 (no tests collected) fails the target.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) -p

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

bench: $(STAMP)
	mkdir -p results/benchmarks
	for b in benchmarks/*.py; do $(BIN)/python $$b --out results/benchmarks/$$(basename $$b .py).json || exit 1; done

clean-results:
	rm -rf results/runs results/tables results/figures
