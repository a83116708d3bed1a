# Two entry points for people: `make up` (caddie with embedded defaults) and
# `make test` (the whole test suite). Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install up test check

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

# Type checks: every module of the service, the worker and the CLI; the pure domain
# modules (no I/O) strictly. Then imports and declared dependencies agree (deptry), and no
# dead code (vulture's high-confidence findings; routes and CLI commands, called by their
# frameworks, are low-confidence findings and stay out).
PURE := service/core/status.py service/queue/policy.py service/queue/forecast.py service/queue/estimates.py \
	service/results/statistics.py service/results/rules.py service/runs/compliance.py service/runs/logparse.py worker/run/deadlines.py \
	service/runs/scripts/environment.py trainer/caseops.py service/sweeps/promotion.py

check: install
	$(BIN)/ruff check .
	$(BIN)/mypy service worker cli
	$(BIN)/mypy --strict --follow-imports=silent $(PURE)
	$(BIN)/deptry .
	$(BIN)/vulture service worker cli trainer --min-confidence 80

# --durations: every run (CI's included) lists its 25 slowest tests, so a test that grows the suite shows.
test: check
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)
