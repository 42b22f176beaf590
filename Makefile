# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs funcgrad, and runs the tour (the main job)
#   make test   the whole test suite (bootstraps .venv too)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench bench-full venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/funcgrad tour

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Every benchmark in scripts/, quick sizes (under 10 minutes on a 2-core CPU); reports in
# scripts/results/all-<platform>-quick/. PyTorch rows need the bench extra: on a CPU-only
# machine `$(PY) -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu`.
bench: $(STAMP)
	PYTHON=$(PY) scripts/bench_all.sh --quick

# The same at full size (about an hour on a 2-core CPU): the tables of the README.
bench-full: $(STAMP)
	PYTHON=$(PY) scripts/bench_all.sh

clean:
	rm -rf $(VENV) funcgrad-tour .pytest_cache .ruff_cache
