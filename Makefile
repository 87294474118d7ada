# Two commands for a fresh Debian machine (as root): `make demo` and `make test`.
# Each installs what it needs first: system packages (only when missing), then a
# project venv with the package and its test tools.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := prometheus prometheus-alertmanager
export DEBIAN_FRONTEND := noninteractive

.PHONY: demo test lint format bench system install clean

demo: install
	$(BIN)/rollbackd demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check daemon tests bench
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/mypy

format: install
	$(BIN)/ruff format daemon tests bench
	$(BIN)/ruff check --fix daemon tests bench

bench: install
	$(BIN)/python bench/bench_tick.py
	@if [ -f bench/backtest_bench.py ]; then $(BIN)/python bench/backtest_bench.py; fi

# System packages: Prometheus and Alertmanager for the demo and the tests, and a
# Python with venv where the machine has none. apt runs only when something is missing.
system:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	  missing="$$missing python3 python3-venv python3-pip"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

install: system $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .rollbackd
