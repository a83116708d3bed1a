# Two entry points for people: `make up` (caddie with embedded defaults) and
# `make test` (the whole test suite). Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install up test

$(BIN)/caddie: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so no version range pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[worker,trainer,skypilot,dev]"
	touch $(BIN)/caddie

install: $(BIN)/caddie

up: install
	$(BIN)/caddie up

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
