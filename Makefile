# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv, install the CPU build of torch first (a bare `torch` pulls a multi-GB
# CUDA build), then edgezoo with its extras.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev,serve,plots]"
	touch $@

demo: setup
	$(BIN)/edgezoo demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q
