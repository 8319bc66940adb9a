"""Stores: an unreachable tracking server or database fails fast with one line; processes racing to create a
fresh store's schema all succeed; runs and trials of dead processes are closed, live ones left alone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import mlflow
import optuna
import pytest

from medgen import search, stores, tracking
from medgen.owner import owner_id
from medgen.params import load_config

from .conftest import assert_one_line_error, env_for, medgen, snapshot

FAIL_FAST_S = 30  # issue 16: an unreachable store fails within 30 s


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_tracking_port_fails_fast_with_one_line(fault_dir):
    uri = f"http://127.0.0.1:{closed_port()}"
    result = medgen(fault_dir, "stage", "prepare", env=env_for(fault_dir, MLFLOW_TRACKING_URI=uri))
    assert_one_line_error(
        result,
        f"MLflow tracking server {uri} unreachable (ConnectionError within 5 s)",
        "point MLFLOW_TRACKING_URI / tracking.mlflow_uri at a reachable store",
        "stage prepare stopped",
    )
    assert snapshot(fault_dir / "data", fault_dir / "metrics", fault_dir / "plots") == {}  # nothing written


@pytest.mark.parametrize("server", ["closed", "hung"])
def test_unreachable_server_check_is_bounded(server, monkeypatch):
    """The check itself (no interpreter start-up): a closed port is refused at once; a server that accepts
    connections and never answers is given up after the ping timeout."""
    for name in stores.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = closed_port() if server == "closed" else hung.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(stores.StoreUnavailable, match="ConnectionError|ReadTimeout"):
            stores.mlflow_ready(f"http://127.0.0.1:{port}")
        assert time.monotonic() - started < FAIL_FAST_S
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == stores.HTTP_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]


def test_unreachable_study_database_is_one_line_with_the_password_hidden(fault_dir):
    url = f"postgresql://medgen:secret@127.0.0.1:{closed_port()}/studies"  # pragma: allowlist secret
    result = medgen(fault_dir, "stage", "prepare", env=env_for(fault_dir, MEDGEN_OPTUNA_STORAGE=url))
    line = assert_one_line_error(result, "Optuna storage postgresql://medgen:***@127.0.0.1:", "stage prepare stopped")
    assert "secret" not in result.stderr, line


RACER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import mlflow, optuna, sqlalchemy  # imported before the start line: the racers start together
    go, ready = Path(sys.argv[1]), Path(sys.argv[2])
    from medgen import search, tracking
    from medgen.params import load_config
    cfg = load_config("params.yaml")
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    tracking.configure(cfg.tracking)          # MLflow: schema creation and migrations
    search._storage(search.storage_url(cfg.tracking))  # Optuna: its tables
    print("ok")
""")


@pytest.mark.parametrize("round_", range(2))
def test_processes_racing_on_a_fresh_store_all_succeed(tmp_path, round_):
    """Issue 16: two `stage prepare` on an empty store crashed one of them 3 times out of 3 (`duplicate
    column name` in MLflow's migrations; Optuna `table studies already exists`)."""
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "PYTHONWARNINGS": "ignore"}
    for name in ("MLFLOW_TRACKING_URI", "MEDGEN_OPTUNA_STORAGE"):
        env.pop(name, None)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(3)]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(go), str(r)],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    for racer in racers:
        out, err = racer.communicate(timeout=300)
        assert racer.returncode == 0 and out.strip() == "ok", err[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}")
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'mlruns/optuna.db'}") == []


def test_ghost_sweep_closes_dead_owners_only(workdir, monkeypatch):
    cfg = load_config("params.yaml")
    tracking.configure(cfg.tracking)
    dead = subprocess.run(
        [sys.executable, "-c", "from medgen.owner import owner_id; print(owner_id())"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    dead_owner = dead.stdout.strip()  # that process has exited
    experiment = tracking.ensure_experiment(cfg, "sweep")
    client = mlflow.MlflowClient()
    ghost = client.create_run(experiment, run_name="ghost", tags={stores.OWNER_TAG: dead_owner}).info.run_id
    live = client.create_run(experiment, run_name="live", tags={stores.OWNER_TAG: owner_id()}).info.run_id
    remote_tags = {stores.OWNER_TAG: "elsewhere:1:1.000"}
    other_host = client.create_run(experiment, run_name="remote", tags=remote_tags).info.run_id
    untagged = client.create_run(experiment, run_name="old").info.run_id
    assert stores.close_dead_runs() == [ghost]
    status = {r: client.get_run(r).info.status for r in (ghost, live, other_host, untagged)}
    assert status == {ghost: "KILLED", live: "RUNNING", other_host: "RUNNING", untagged: "RUNNING"}

    study = optuna.create_study(study_name="sweep", storage=search.storage_url(cfg.tracking))
    for owner in (dead_owner, owner_id()):
        trial = study.ask()
        trial.set_user_attr(search.OWNER_ATTR, owner)
    assert stores.fail_dead_trials(search.storage_url(cfg.tracking)) == {"sweep": [0]}
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING"]


def test_an_interrupted_stage_leaves_no_run_of_its_process_running(workdir, monkeypatch):
    """The CI race: SIGTERM landed inside MLflow right after a trial's run was created, and the stage run stayed
    RUNNING. The runner now closes every run this process owns as it unwinds, except the runs still open."""
    from medgen import runner

    cfg = load_config("params.yaml")
    tracking.configure(cfg.tracking)
    experiment = tracking.ensure_experiment(cfg, "interrupt")
    client = mlflow.MlflowClient()
    mine = client.create_run(experiment, run_name="stage", tags={stores.OWNER_TAG: owner_id()}).info.run_id
    child = client.create_run(experiment, run_name="trial", tags={stores.OWNER_TAG: owner_id()}).info.run_id
    other = client.create_run(experiment, run_name="other", tags={stores.OWNER_TAG: "elsewhere:1:1.000"}).info.run_id
    with mlflow.start_run(experiment_id=experiment, run_name="pipeline", tags={stores.OWNER_TAG: owner_id()}) as open_:
        runner._kill_own_runs()  # what run_stage does on KeyboardInterrupt
        status = {r: client.get_run(r).info.status for r in (mine, child, other, open_.info.run_id)}
    assert status == {mine: "KILLED", child: "KILLED", other: "RUNNING", open_.info.run_id: "RUNNING"}
