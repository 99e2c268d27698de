# The README's two commands: `make demo` (set up, run the default simulation) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned: an open range pulls a multi-GB CUDA build on CPU-only machines
TORCH ?= torch==2.13.0
# tests read real files from ../shared/data when it is there (and skip when not)
TEST_DATA ?= $(abspath ../shared/data)
export FLWR_TELEMETRY_ENABLED = 0
export MLFLOW_DISABLE_TELEMETRY = true

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,ui]"  # ui: full mlflow, for `medfed ui` and its test
	touch $@

demo: setup
	$(BIN)/medfed simulate configs/breast-cancer.yaml --out runs/breast-cancer

lint: setup
	$(BIN)/ruff check .

test: setup lint
	MEDFED_DATA_DIR=$${MEDFED_DATA_DIR:-$(TEST_DATA)} $(BIN)/pytest

bench: setup
	$(BIN)/python bench/overhead.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
