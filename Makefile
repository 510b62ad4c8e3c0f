# Two commands: `make demo` and `make test`. Both create .venv first (only Python 3.11+ and make needed).
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck bench arcgis-env clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || (echo "mosaicflow needs Python 3.11 or newer on PATH" >&2; exit 1)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/mosaicflow demo demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks.ingest

# The ArcGIS API for Python (large) in its own environment, for tests/test_arcgis_client.py
arcgis-env:
	test -x .venv-arcgis/bin/python || $(PYTHON) -m venv .venv-arcgis
	.venv-arcgis/bin/python -m pip install --quiet arcgis six

clean:
	rm -rf $(VENV) .venv-arcgis demo-output .pytest_cache .mypy_cache .ruff_cache
