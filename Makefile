# keyd — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv test lint unit integration demo bench migration clean

venv: $(STAMP)

# Creates/updates the venv from nothing; reinstalls when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check keyd tests bench examples
	$(VENV)/bin/mypy keyd

# The whole suite: lint, types, unit and integration tests (real OpenBao,
# PostgreSQL, SMTP and authorization server; a missing service fails).
test: lint
	$(VENV)/bin/pytest -q tests

unit: venv
	$(VENV)/bin/pytest -q tests/unit

integration: venv
	$(VENV)/bin/pytest -q tests/integration

demo: venv
	$(PY) examples/demo.py

bench: venv
	$(PY) bench/mint.py
	$(PY) bench/scan.py
	$(PY) bench/probe.py

# Regenerate the initial migration after a model change (pre-1.0 only).
migration: venv
	$(PY) -m keyd.store.autogen

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
