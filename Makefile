# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv, installs funcgrad, and runs the tour (the main job)
#   make test   the whole test suite (bootstraps .venv too)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench venv clean

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

bench: $(STAMP)
	$(PY) scripts/bench_grad.py
	$(PY) scripts/bench_train.py

clean:
	rm -rf $(VENV) funcgrad-tour .pytest_cache .ruff_cache
