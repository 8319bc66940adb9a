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

.PHONY: help setup lint test test-gpu run report repro-check power lock ui serve bench-serve load-serve bench-backpressure container-check container-check-pipeline security-scan cluster-up cluster-down bench-cluster

.DEFAULT_GOAL := help

help:  ## this list: every target with what it does
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/' | expand -t 20

setup:  ## fresh virtual environment with every pinned version, then medgen itself (editable)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/medgen --version

lint:  ## ruff: lint (pycodestyle, pyflakes, import order) and format check, line length 120 (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

TEST_WORKERS ?= 2
test:  ## the whole suite (unit, data, integration on the smoke profile, serving) in TEST_WORKERS processes, a file each
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

test-gpu:  ## checks that need a CUDA GPU (tests/gpu; skipped without one): seeded fits on it repeat bit for bit
	$(BIN)/python -m pytest -q -rs tests/gpu

run:  ## the main job: the DVC pipeline with the defaults in params.yaml
	$(BIN)/dvc repro

report:  ## docs/results.md and README's results table from metrics/*.json; prints the table (medgen report)
	$(BIN)/medgen report

repro-check:  ## smoke pipeline from clean copies: twice (2nd keeps mlruns/) + killed and resumed; fails if any output differs
	$(BIN)/python scripts/repro_check.py

power:  ## smallest detectable augment differences with 3/5/10 seeds, from the augment stage's test probabilities
	$(BIN)/python scripts/power.py estimate plots/augment/test_probs.csv --details metrics/augment_details.json

lock:  ## re-pin requirements.lock from the current environment (after changing pyproject.toml)
	{ head -n 2 requirements.lock; $(BIN)/python -m pip freeze --exclude-editable | grep -vi '^medgen'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

ui:  ## MLflow UI over the local store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns/artifacts --host 127.0.0.1 --port 5000

serve:  ## the inference service over the exported ONNX models (models/export) on 127.0.0.1:3000
	$(BIN)/medgen serve

bench-serve:  ## /classify p50/p99 + throughput at concurrency 1/8/32 vs in-process onnxruntime -> reports/serve_bench.json
	$(BIN)/python scripts/serve_bench.py bench

load-serve:  ## 60 s of mixed good and bad requests; fails on any 5xx/unexpected status -> reports/serve_load.json
	$(BIN)/python scripts/serve_bench.py load --seconds 60

bench-backpressure:  ## keys + rate limit + in-flight bound + wait budget at concurrency 32/128 vs unloaded -> reports/serve_backpressure.json
	$(BIN)/python scripts/serve_backpressure.py

container-check:  ## build the serve image (podman or docker), run it as docs/serving.md prints, check it end to end
	$(BIN)/python scripts/container_check.py

container-check-pipeline:  ## build the pipeline image, run the smoke pipeline in it as documented, compare with the host smoke run (~6 min cold, ~7 GB image; not in CI)
	$(BIN)/python scripts/container_pipeline.py

security-scan:  ## secret scan (detect-secrets vs the committed .secrets.baseline) + bandit (medium and high severity)
	git ls-files -z | xargs -0 $(BIN)/detect-secrets-hook --baseline .secrets.baseline
	$(BIN)/bandit -q -r src serving scripts flows --severity-level medium

WORKERS ?= 2
cluster-up:  ## PostgreSQL + MLflow server + Prefect server + pools + WORKERS workers on 127.0.0.1 (DETACH=1: background)
	$(BIN)/python scripts/cluster.py up --workers $(WORKERS) $(if $(DETACH),--detach)

cluster-down:  ## stop everything cluster-up started, by PID (PURGE=1 also deletes .cluster/, the database included)
	$(BIN)/python scripts/cluster.py down $(if $(PURGE),--purge)

bench-cluster:  ## the same classify search on 1 and 2 workers, interleaved, twice (needs cluster-up) -> reports/cluster_bench.json
	$(BIN)/python scripts/cluster_bench.py --repeat 2
