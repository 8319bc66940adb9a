# medgen: three commands for a newcomer: `make setup`, `make test`, `make run`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3.11
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Tests and CI read the real BreastMNIST from ../shared/data unless MEDGEN_DATA_SOURCE says otherwise.
SHARED_NPZ := $(wildcard $(abspath ../shared/data/breastmnist.npz))
ifneq ($(SHARED_NPZ),)
export MEDGEN_DATA_SOURCE ?= $(SHARED_NPZ)
endif

.PHONY: setup test run lock ui

setup:  ## fresh virtual environment with every pinned version, then medgen itself (editable)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/medgen --version

test:  ## the whole suite (unit, data, integration on the smoke profile, serving)
	$(BIN)/python -m pytest -q

run:  ## the main job: the DVC pipeline with the defaults in params.yaml
	$(BIN)/dvc repro

lock:  ## re-pin requirements.lock from the current environment (after changing pyproject.toml)
	{ head -n 2 requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^medgen'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

ui:  ## MLflow UI over the local store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts --host 127.0.0.1 --port 5000
