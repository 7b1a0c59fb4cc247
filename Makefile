# `make pipeline`: set up, restore what the default DVC remote holds (none: skipped), then
# run the whole pipeline (dvc repro) on real Omniglot.
# `make test`: set up and run the checks and the test suite (what CI runs).
# `make check`: the quick tier: ruff, the import layers, mypy and the tests not marked slow.
# `make lock`: re-resolve '.[dev]' and rewrite requirements.lock and requirements-build.lock.
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

# torch 2.13.0's CPU build (2.13.0+cpu, what the lock pins) is not on PyPI: pip takes it from
# PyTorch's CPU index, unless the machine holds the wheel in pip's find-links (this project's
# machines do, in /opt/wheels, and reach no other index).
TORCH_WHEEL := $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl)
TORCH_INDEX := $(if $(TORCH_WHEEL),,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: pipeline test check lint flow bench setup lock

setup: $(VENV)/.installed $(VENV)/.built

# Every package at the version and sha256 that requirements.lock names; pip and setuptools
# first, so that the one sdist (antlr4-python3-runtime) builds with the locked setuptools.
$(VENV)/.installed: pyproject.toml requirements.lock requirements-build.lock
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r requirements-build.lock
	$(BIN)/python -m pip install -q --require-hashes --no-build-isolation $(TORCH_INDEX) \
		-r requirements.lock
	touch $@

# The project itself, editable (setuptools' warning that imports then come from the checkout
# says what is meant, and is silenced), with its one compiled part, siamese/_gemm.c, built by
# setup.py with the machine's C compiler: again whenever that source changes.
$(VENV)/.built: $(VENV)/.installed pyproject.toml setup.py siamese/_gemm.c
	PYTHONWARNINGS="ignore:Editable installation" \
		$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

lock: setup
	$(BIN)/python -m pip install -q --dry-run --ignore-installed $(TORCH_INDEX) \
		--report $(VENV)/report.json '.[dev]' 'setuptools>=77' pip
	$(BIN)/python -m tools.lockfile $(VENV)/report.json

pipeline: setup
	siamese pull
	dvc repro
	dvc metrics show

lint: setup
	ruff check .
	lint-imports --no-cache
	mypy

test: lint
	pytest -q -n 2 --dist loadfile

check: lint
	pytest -q -m "not slow" -n 2

flow: setup
	siamese run

bench: setup
	siamese bench
