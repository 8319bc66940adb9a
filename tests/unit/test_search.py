"""Optuna plumbing: resumable studies, nested MLflow runs per trial, pruned trials tagged not failed."""

import mlflow
import optuna
import pytest

from medgen import search, tracking
from medgen.config import build_config


@pytest.fixture
def cfg(workdir):
    return build_config({"tracking": {"store_dir": str(workdir / "mlruns")}})


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    k = trial.suggest_int("k", 1, 10)
    if k > 8:
        raise optuna.TrialPruned()
    return -((x - 0.01) ** 2) - k * 1e-3


def test_study_resumes_and_nests_trials(cfg):
    with tracking.stage_run(cfg, "unit") as parent:
        study = search.open_study(cfg, "unit")
        search.optimize(study, objective, n_trials=4, parent_run_id=parent.info.run_id)
    assert len(study.trials) == 4
    with tracking.stage_run(cfg, "unit") as parent2:
        resumed = search.open_study(cfg, "unit")
        assert resumed.study_name == "breastmnist-unit" and len(resumed.trials) == 4
        search.optimize(resumed, objective, n_trials=3, parent_run_id=parent2.info.run_id)
    trials = resumed.trials
    assert len(trials) == 7 and len({t.number for t in trials}) == 7
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 7  # no replayed start-up points

    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    client = mlflow.MlflowClient()
    parents = [client.get_run(r).data.tags["mlflow.parentRunId"] for r in run_ids]
    assert parents == [parent.info.run_id] * 4 + [parent2.info.run_id] * 3
    for trial, run_id in zip(trials, run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.state"] == trial.state.name
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])


def test_best_params_requires_a_completed_trial(cfg):
    from medgen.errors import MedgenError

    def always_pruned(trial):
        trial.suggest_int("k", 1, 3)
        raise optuna.TrialPruned()

    with tracking.stage_run(cfg, "unit") as parent:
        study = search.open_study(cfg, "unit", suffix="pruned")
        search.optimize(study, always_pruned, n_trials=2, parent_run_id=parent.info.run_id)
    with pytest.raises(MedgenError, match="no completed trial"):
        search.best_params(study)
