"""Optuna plumbing: n_trials is a target, resumed (even killed) studies repeat an uninterrupted one,
study names hash what defines the search, trials nest in MLflow, pruned trials are tagged not failed."""

import os
import subprocess
import sys
import textwrap

import mlflow
import optuna
import pytest

from medgen import search, tracking
from medgen.params import build_config

SPEC = {"section": {"lr_max": 0.1}, "seed": 42}


@pytest.fixture
def cfg(workdir):
    return build_config({"tracking": {"store_dir": str(workdir / "mlruns")}})


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    k = trial.suggest_int("k", 1, 10)
    if k > 8:
        raise optuna.TrialPruned()
    return -((x - 0.01) ** 2) - k * 1e-3


def points(study: optuna.Study) -> list[tuple]:
    finished = study.get_trials(states=search.FINISHED)
    return [(t.state.name, t.params["k"], round(t.params["lr"], 12)) for t in finished]


def run(cfg, n, spec=SPEC, stage="unit"):
    with tracking.stage_run(cfg, stage) as parent:
        study = search.open_study(cfg, stage, spec)
        return search.optimize(study, objective, n_trials=n, parent_run_id=parent.info.run_id), parent.info.run_id


def test_n_trials_is_a_target_and_growing_it_matches_a_fresh_study(cfg, workdir, monkeypatch):
    first, parent = run(cfg, 4)
    assert search.counts(first)["trials"] == 4
    again, _ = run(cfg, 4)  # unchanged params: no new trial, same best
    assert len(again.trials) == 4 and again.best_trial.params == first.best_trial.params
    grown, parent2 = run(cfg, 7)
    assert search.counts(grown)["trials"] == 7 and len({t.number for t in grown.trials}) == 7
    assert len(set(points(grown))) == 7  # no replayed start-up point

    monkeypatch.setenv(search.STORAGE_ENV, f"sqlite:///{workdir / 'fresh.db'}")
    fresh, _ = run(cfg, 7)
    assert points(fresh) == points(grown)  # 4 then 3 more == 7 at once

    client = mlflow.MlflowClient()
    run_ids = [t.user_attrs["mlflow_run_id"] for t in grown.trials]
    parents = [client.get_run(r).data.tags["mlflow.parentRunId"] for r in run_ids]
    assert parents == [parent] * 4 + [parent2] * 3
    for trial, run_id in zip(grown.trials, run_ids):
        mlflow_run = client.get_run(run_id)
        assert mlflow_run.info.status == "FINISHED"
        assert mlflow_run.data.tags["optuna.state"] == trial.state.name
        assert float(mlflow_run.data.params["lr"]) == pytest.approx(trial.params["lr"])


def test_study_name_hashes_the_search_definition(cfg):
    name = search.study_name("breastmnist", "unit", "", SPEC)
    assert name.startswith("breastmnist-unit-") and len(name.rsplit("-", 1)[1]) == 10
    assert search.study_name("breastmnist", "unit", "", {**SPEC, "seed": 43}) != name
    assert search.study_name("breastmnist", "unit", "", dict(reversed(list(SPEC.items())))) == name
    full = search.definition(cfg, "classify")
    assert "n_trials" not in full["section"] and "seeds" not in full["section"] and "lr_range" in full["section"]
    assert search.definition(build_config({"classify": {"n_trials": 3}}), "classify") == full
    assert search.definition(build_config({"classify": {"lr_range": [1e-4, 1e-2]}}), "classify") != full


KILLED_WORKER = textwrap.dedent("""
    import os, signal, sys, optuna
    from medgen import search, tracking
    from medgen.params import build_config
    sys.path.insert(0, sys.argv[1])
    from test_search import SPEC, objective
    cfg = build_config({"tracking": {"store_dir": sys.argv[2]}})
    calls = []
    def dying(trial):
        calls.append(1)
        if len(calls) == 3:
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the third trial
        return objective(trial)
    with tracking.stage_run(cfg, "unit") as parent:
        study = search.open_study(cfg, "unit", SPEC)
        search.optimize(study, dying, n_trials=6, parent_run_id=parent.info.run_id)
""")


def test_a_killed_study_resumes_to_the_same_trials(cfg, workdir, monkeypatch):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WORKER, os.path.dirname(__file__), str(workdir / "mlruns")],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    storage = search.storage_url(cfg.tracking)
    name = search.study_name("breastmnist", "unit", "", SPEC)
    left = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in left][-1] == "RUNNING"  # the ghost the kill left behind

    resumed, _ = run(cfg, 6)
    states = [t.state.name for t in resumed.trials]
    assert "RUNNING" not in states and states.count("FAIL") == 1
    monkeypatch.setenv(search.STORAGE_ENV, f"sqlite:///{workdir / 'uninterrupted.db'}")
    uninterrupted, _ = run(cfg, 6)
    assert points(resumed) == points(uninterrupted)
    assert resumed.best_trial.params == uninterrupted.best_trial.params


def test_fixed_first_trials_are_queued_once(cfg):
    fixed = [{"lr": 0.01, "k": 3}]
    with tracking.stage_run(cfg, "unit") as parent:
        study = search.open_study(cfg, "unit", SPEC, fixed=fixed)
        search.optimize(study, objective, n_trials=2, parent_run_id=parent.info.run_id)
        reopened = search.open_study(cfg, "unit", SPEC, fixed=fixed)
    assert study.trials[0].params == fixed[0]
    assert len(reopened.trials) == 2  # nothing queued again: the fixed trial already ran


def test_best_params_requires_a_completed_trial(cfg):
    from medgen.errors import MedgenError

    def always_pruned(trial):
        trial.suggest_int("k", 1, 3)
        raise optuna.TrialPruned()

    with tracking.stage_run(cfg, "unit") as parent:
        study = search.open_study(cfg, "unit", SPEC, suffix="pruned")
        search.optimize(study, always_pruned, n_trials=2, parent_run_id=parent.info.run_id)
    with pytest.raises(MedgenError, match="no completed trial"):
        search.best_params(study)


def test_a_killed_but_unreaped_owner_is_dead():
    import signal
    import socket
    import time

    import psutil

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    owner = f"{socket.gethostname()}:{child.pid}:{psutil.Process(child.pid).create_time():.3f}"
    assert search.owner_alive(owner) is True
    os.kill(child.pid, signal.SIGKILL)  # not waited for: a zombie until reaped
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.05)
    assert search.owner_alive(owner) is False
    child.wait()
    assert search.owner_alive(owner) is False


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the ghost's study.ask() outside optimize
def test_a_dead_workers_trial_is_retried_by_a_live_one(workdir):
    """A trial another host left RUNNING (its heartbeat stopped) holds part of the target: the live worker
    waits, fails it after tracking.optuna_grace_s and runs it again with the same parameters."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    tracking_cfg = {"store_dir": str(workdir / "mlruns"), "optuna_heartbeat_s": 1, "optuna_grace_s": 2}
    cfg = build_config({"tracking": tracking_cfg})
    with tracking.stage_run(cfg, "unit") as parent:
        study = search.open_study(cfg, "unit", SPEC, suffix="ghost")
        ghost = study.ask()  # a worker on another host starts a trial, beats once, then dies
        ghost.suggest_float("lr", 1e-4, 1e-1, log=True)
        ghost.suggest_int("k", 1, 10)
        ghost.set_user_attr(search.OWNER_ATTR, "another-host:123:1.000")
        study._storage.record_heartbeat(ghost._trial_id)
        search.optimize(study, objective, n_trials=4, parent_run_id=parent.info.run_id)
    trials = study.trials
    assert [t.state.name for t in trials].count("FAIL") == 1 and trials[ghost.number].state.name == "FAIL"
    assert search.finished_trials(study) == 4 and len(trials) == 5
    (retried,) = [t for t in trials if Retry.retried_trial_number(t) == ghost.number]
    assert retried.state in search.FINISHED and retried.params == trials[ghost.number].params


def test_heartbeat_settings_are_validated():
    from medgen.errors import ConfigError

    with pytest.raises(ConfigError, match="tracking.optuna_grace_s"):
        build_config({"tracking": {"optuna_heartbeat_s": 10, "optuna_grace_s": 5}})
    with pytest.raises(ConfigError, match="tracking.optuna_heartbeat_s"):
        build_config({"tracking": {"optuna_heartbeat_s": 0}})
