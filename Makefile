PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint types unit run examples bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/munsit-bridge demo

run: $(STAMP)
	$(BIN)/munsit-bridge run --config bridge.toml

lint: $(DEV_STAMP)
	$(BIN)/ruff check bridge tests bench
	$(BIN)/ruff format --check bridge tests bench

types: $(DEV_STAMP)
	$(BIN)/mypy

unit: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

test: lint types unit

bench: $(DEV_STAMP)
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.poll_cost
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.replicas
	$(BIN)/python -m bench.gateway

soak: $(DEV_STAMP)
	BRIDGE_SOAK_KILLS=100 BRIDGE_SOAK_RECORDS=5000 $(BIN)/python -m pytest -q \
		-o timeout=1800 tests/integration/test_kill_restart.py tests/faults

examples: $(STAMP)
	$(BIN)/python -m bridge.examples --write README.md

clean:
	rm -rf $(VENV) build *.egg-info
