# The project's two commands: `make demo` (main job) and `make test` (whole test suite).
# Each creates the virtualenv .venv on first use and refreshes it when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.braze-installed
PYTEST_WORKERS ?= auto

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@# Debian's python3 without python3-venv has no ensurepip: fall back to virtualenv.
	$(PYTHON) -m venv $(VENV) || { $(PYTHON) -m pip install --user virtualenv && $(PYTHON) -m virtualenv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The editable install maps the top-level folders into braze.*; setuptools always warns about
	@# such layouts, which is expected here (everything else it could warn about is fixed).
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/braze demo

test: $(STAMP)
	@# The 30 slowest tests are listed at the end, so a CI log shows where the 20-minute budget goes.
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup --durations=30

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .braze-cache
