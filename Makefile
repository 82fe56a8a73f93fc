# The commands of the README: `make test`, `make repro` and `make rehearse`. They create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: test test-slow repro rehearse rehearse-ci lint bench clean-results help

help:
	@echo "make test   - create .venv if missing, install the pinned environment, run the test suite"
	@echo "make repro  - create .venv if missing, run the whole pipeline on the embedded default"
	@echo "make rehearse - the paper path (all setups, methods, ablations, tables) offline on the CPU:"
	@echo "                random-weight SD 1.5 and placeholder data, numbers meaningless (~15 min)"
	@echo "make rehearse-ci - the same, one setup per data-set layout, SD 1.5 narrow (~5 min; in make test-slow)"
	@echo "make lint   - ruff + snakemake --lint"
	@echo "make bench  - the benchmarks in benchmarks/ (writes results/benchmarks/*.json)"

# Re-installs when the pinned list or the package metadata changes. uv installs the list in about
# half pip's time, under the index settings pip has here (src/selora/uvinstall.py; benchmarks/README,
# "uv installs it in half the time"). uv is the installer, not a dependency of the package: pinned
# here, as pip is the venv's own.
UV_PIN := uv==0.13.8
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip $(UV_PIN)
	PYTHONPATH=src $(BIN)/python -m selora.uvinstall --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# pytest's own exit codes pass through: 5 (no tests collected) fails the target. One pytest-xdist
# worker per core (at most 4), each test module whole on one worker, in the order tests/conftest.py sets.
XDIST := -n auto --maxprocesses 4 --dist loadscope --no-loadscope-reorder
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q $(XDIST)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) -p

# The paper's params with the rehearsal overlay (.test/config-rehearsal.yaml), through the same
# Snakefile, rules and subcommands; the ingredients come from `selora rehearsal-assets`. A second
# run builds nothing and runs no job. rehearse-ci adds .test/config-rehearsal-ci.yaml (one setup per
# data-set layout, SD 1.5's layer structure at narrow widths); `make test-slow` runs it.
REHEARSAL_CONFIG := --configfile params-paper.yaml .test/config-rehearsal.yaml
rehearse: REHEARSAL_OUT := results-rehearsal
rehearse: REHEARSAL_SD15 := full
rehearse-ci: REHEARSAL_CONFIG += .test/config-rehearsal-ci.yaml
rehearse-ci: REHEARSAL_OUT := results-rehearsal-ci
rehearse-ci: REHEARSAL_SD15 := narrow
rehearse rehearse-ci: $(STAMP)
	@start=$$(date +%s); \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/selora rehearsal-assets --out rehearsal-assets --sd15 $(REHEARSAL_SD15) && \
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) -p --rerun-incomplete $(REHEARSAL_CONFIG) && \
	echo "$@: done in $$(( $$(date +%s) - start )) s on $(CORES) cores; tables in $(REHEARSAL_OUT)/tables"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

bench: $(STAMP)
	mkdir -p results/benchmarks
	for b in benchmarks/[!_]*.py; do $(BIN)/python $$b --out results/benchmarks/$$(basename $$b .py).json || exit 1; done

clean-results:
	rm -rf results/runs results/tables results/figures
