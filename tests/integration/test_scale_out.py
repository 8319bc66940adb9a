"""Scale out: two worker processes share one Optuna study through one storage URL; trials add up."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from medgen import search, tracking
from medgen.params import load_config

pytestmark = pytest.mark.integration
WORKER = Path(__file__).with_name("optuna_worker.py")
N_PER_WORKER = 6


def test_two_worker_processes_share_one_study(workdir, monkeypatch):
    storage = f"sqlite:///{workdir / 'shared-optuna.db'}"
    monkeypatch.setenv(search.STORAGE_ENV, storage)
    mlflow_uri = f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}"  # pre-migrated by the workdir fixture
    cfg = load_config(workdir / "params.yaml")
    with tracking.stage_run(cfg, "scale") as parent:
        parent_id = parent.info.run_id
    # Create the storage's schema and the study once, before the workers start: two processes
    # creating Optuna's tables in one fresh sqlite file at once race on the migration.
    search.open_study(cfg, "scale", {"test": "scale"}, suffix="workers")
    env = {
        **os.environ,
        search.STORAGE_ENV: storage,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "params.yaml", parent_id, str(2 * N_PER_WORKER)],
            env={**env, search.WORKER_ENV: str(i)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-2000:]

    study = optuna.load_study(
        study_name=search.study_name("breastmnist", "scale", "workers", {"test": "scale"}), storage=storage
    )
    trials = study.trials
    # n_trials is the study's target shared by both workers: it is reached, at most one trial over when
    # both check the count at the same instant; every trial of both workers is stored, none lost
    assert 2 * N_PER_WORKER <= len(trials) <= 2 * N_PER_WORKER + 1
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no number taken twice
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    points = {(t.params["latent_dim"], t.params["k"], round(t.params["lr"], 12)) for t in trials}
    assert len(points) == len(trials)  # the workers did not sample the same points
    run_ids = {t.user_attrs["mlflow_run_id"] for t in trials}
    assert len(run_ids) == len(trials)
    client = mlflow.MlflowClient(tracking_uri=mlflow_uri)
    for run_id in run_ids:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent_id
