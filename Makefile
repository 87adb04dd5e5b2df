# The two set-up commands of the README; CI (.ci/run) calls `make test` too.
#   make demo   create .venv, install conveyor, run a worker on SQLite and ~1,000 real tasks
#   make test   create .venv, install conveyor with its test tools, run ruff, mypy --strict and pytest
#   make bench  the side-by-side benchmark against Celery, Dramatiq, RQ, Huey and arq (BENCH_ARGS=--quick ...)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test check bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python examples/demo.py

check: install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/test

bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
