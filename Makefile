# Two entry points on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
CORES ?= $(shell nproc)
export PATH := $(BIN):$(PATH)

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install  ## simulate -> train -> strain -> evaluate on the embedded config.yaml
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete --printshellcmds
	@cat results/report.md

test: install  ## the test suite (tests/slurm run when a Slurm is up: tests/slurm/start-slurm.sh)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakemake --lint

bench: install  ## benchmarks, results in bench/results/
	$(BIN)/python bench/run_all.py

clean:
	rm -rf results logs benchmarks .snakemake
