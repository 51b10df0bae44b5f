# Two commands for a newcomer: `make demo` and `make test`. Everything else
# they need (the venv, the project, its test tools, the linters for `make lint`)
# is installed from here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed-test
DEV_STAMP := $(VENV)/.installed-dev
LINT_PATHS := agent_queue coordinator_stub tests demo benchmarks scripts
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-smoke chaos clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# scripts/coordinator-stub too: the editable install copies it into the venv's bin.
$(STAMP): pyproject.toml scripts/coordinator-stub | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The dev extra (linters, type stubs) includes the test extra: one install serves both.
$(DEV_STAMP): pyproject.toml scripts/coordinator-stub | $(PY)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEV_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) demo/two-factory-demo

test: $(STAMP)
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff on everything with Python in it; mypy (strict) on what pyproject.toml's [tool.mypy] files lists.
lint: $(DEV_STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

bench-smoke: $(STAMP)
	$(PY) benchmarks/run_all.py --smoke

chaos: $(STAMP)
	$(BIN)/pytest -q -s -m chaos --chaos-long --chaos-figures docs/reliability-figures.json tests/chaos

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
