# The two commands of the quick start: `make run` and `make test`. CI runs `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint types unit bench sysdeps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/iap dev

sysdeps:
	bash scripts/sysdeps.sh

lint: $(STAMP)
	$(BIN)/ruff check iap tests bench examples
	$(BIN)/ruff format --check iap tests bench examples
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest --cov --cov-report=term

test: $(STAMP) sysdeps lint types unit

bench: $(STAMP)
	bash scripts/sysdeps.sh wrk
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage
