# Two commands for a newcomer: `make demo` and `make test`. Everything else
# they need (the venv, the project, its test tools) is installed from here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed-test
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-smoke chaos clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) demo/two-factory-demo

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check agent_queue coordinator_stub tests
	$(BIN)/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-smoke: $(STAMP)
	$(PY) benchmarks/run_all.py --smoke

chaos: $(STAMP)
	$(BIN)/pytest -q -s -m chaos --chaos-long --chaos-figures docs/reliability-figures.json tests/chaos

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
