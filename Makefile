# `make pipeline`: set up, restore what the default DVC remote holds (none: skipped), then
# run the whole pipeline (dvc repro) on real Omniglot.
# `make test`: set up and run the checks and the test suite (what CI runs).
# `make check`: the quick tier: ruff, the import layers, mypy and the tests not marked slow.
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

# In a workplace with the data beside the checkout, take it from there (no download).
SHARED_DATA := $(abspath ../shared/data/omniglot)
ifeq ($(origin OMNIGLOT_SOURCE), undefined)
  ifneq ($(wildcard $(SHARED_DATA)/SHA256SUMS),)
    export OMNIGLOT_SOURCE := $(SHARED_DATA)
  endif
endif

# Prefect's settings (its home .prefect/, no analytics): prefect.toml, read from this folder;
# DVC's analytics are off in .dvc/config.

.PHONY: pipeline test check lint flow bench setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

pipeline: setup
	siamese pull
	dvc repro
	dvc metrics show

lint: setup
	ruff check .
	lint-imports --no-cache
	mypy

test: lint
	pytest -q

check: lint
	pytest -q -m "not slow"

flow: setup
	siamese run

bench: setup
	siamese bench
