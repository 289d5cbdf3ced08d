# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 4

.PHONY: install demo test lint typecheck unit tools postgres bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m goipd.sim.demo

# System tools and services the tests use for real (no fakes): promtool/prometheus,
# systemd-analyze, and the PostgreSQL server on 127.0.0.1:5432.
tools: postgres
	bash scripts/ensure-prometheus.sh
	bash scripts/ensure-systemd.sh
	bash scripts/ensure-alertmanager.sh
	bash scripts/ensure-chromium.sh

postgres:
	pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	pg_isready -h 127.0.0.1 -p 5432 -t 30

lint: $(STAMP)
	$(BIN)/ruff check goipd tests bench
	$(BIN)/ruff format --check goipd tests bench

typecheck: $(STAMP)
	$(BIN)/mypy goipd

# In parallel (pytest-xdist): the tests mostly wait (sleeps, subprocesses, loopback), so 4 workers
# keep 2 cores busy. loadgroup: one test at a time to whichever worker is free, except tests
# marked xdist_group("name"), which run on one worker. PYTEST_ARGS="-n 0" runs them one by one.
# PYTHONDONTWRITEBYTECODE is cleared so every worker and goipd process reads cached bytecode
# instead of compiling the sources again (__pycache__ is git-ignored).
unit: $(STAMP) tools
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: lint typecheck unit

# Performance, measured against baselines in the same run; results in bench/RESULTS.md.
bench: $(STAMP) postgres
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache var
