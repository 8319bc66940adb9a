"""Fan one searched stage's Optuna study out over a Prefect work pool, then finish the stage.

    medgen-fanout  (the coordinator; pool `medgen-control`): prepare, one parent MLflow run, `workers`
                   concurrent runs of medgen-search on the compute pool, wait for them, then the stage's
                   own `run` (final fit, metrics, outputs) nested under the same parent.
    medgen-search  (one per worker; pool `medgen`): `stages.<stage>.search_only`: trials until the shared
                   study holds the stage's n_trials, nested under the parent run; no files written.

Every medgen-search run gets its own worker number (parameter `worker`, else $MEDGEN_WORKER_ID), so the
seeded samplers draw different points, and all add trials to the same study ($MEDGEN_OPTUNA_STORAGE:
PostgreSQL for several workers). A worker killed mid-trial stops its heartbeat; after
tracking.optuna_grace_s a live worker fails that trial and runs it again with the same parameters, and
no worker returns before the study holds n_trials. The finishing run finds the target reached (or tops
it up itself) and writes exactly what `medgen stage <stage>` writes. No ML logic lives here.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from typing import Any

import mlflow
from prefect import flow, get_run_logger

from flows.pipeline import PARAMS_FILE, stage_overrides, stage_task
from medgen import search, stages, tracking
from medgen.config import Config
from medgen.errors import ConfigError
from medgen.params import load_config

SEARCH_FLOW = "medgen-search"
POLL_S = 2.0


def ensure_prepared(cfg: Config) -> None:
    """The prepared data a study's name hashes: run `prepare` once if this machine lacks it (a file lock
    keeps concurrent workers on one checkout from writing it twice)."""
    path = cfg.data.prepared_path
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            stages.get("prepare")(cfg)


@flow(name=SEARCH_FLOW, log_prints=True)
def search_flow(
    stage: str = "represent",
    flag: str = "breastmnist",
    profile: str | None = None,
    overrides: list[str] | None = None,
    worker: int | None = None,
    parent_run_id: str = "",
    params: str = PARAMS_FILE,
) -> dict[str, Any]:
    """One fan-out worker: trials of `stage`'s study (shared target n_trials), nested under parent_run_id."""
    searcher = stages.get_search(stage)  # an unsearched stage fails before any work
    if worker is not None:
        os.environ[search.WORKER_ENV] = str(worker)
    os.environ.pop("MLFLOW_RUN_ID", None)
    cfg = load_config(params, profile=profile, overrides=stage_overrides(flag, overrides or [], parent_run_id))
    ensure_prepared(cfg)
    get_run_logger().info("search %s as worker %s (profile %s)", stage, search.worker_id(), cfg.profile)
    return searcher(cfg)


def dispatch(stage: str, workers: int, deployment: str, parameters: dict[str, Any]) -> list[Any]:
    """`workers` flow runs of medgen-search/<deployment> on its pool, worker numbers 0..workers-1."""
    from prefect.deployments import run_deployment

    return [
        run_deployment(
            name=f"{SEARCH_FLOW}/{deployment}",
            parameters={**parameters, "worker": i},
            timeout=0,
            flow_run_name=f"{stage}-search-{i}",
        )
        for i in range(workers)
    ]


def wait_for(run_ids: Sequence[Any], timeout_s: float) -> dict[str, str]:
    """Flow run name -> final state name, polling until every run is final or `timeout_s` passed (a run
    whose worker machine vanished may never report; the finishing run tops up the study then)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(run_id) for run_id in run_ids]
            if all(r.state is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return {r.name: (r.state.name if r.state else "UNKNOWN") for r in runs}
            time.sleep(POLL_S)


@flow(name="medgen-fanout", log_prints=True)
def fanout_flow(
    stage: str = "represent",
    workers: int = 2,
    flag: str = "breastmnist",
    profile: str | None = None,
    overrides: list[str] | None = None,
    deployment: str | None = None,
    timeout_s: float = 6 * 3600.0,
    params: str = PARAMS_FILE,
) -> dict[str, Any]:
    """`stage`'s search as `workers` concurrent medgen-search runs, then the stage finished from its study.

    deployment: name of the medgen-search deployment (default: the flag). Returns the search runs' final
    states, the seconds spent searching and finishing, and the stage's metrics.
    """
    stages.get_search(stage)
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    logger, overrides = get_run_logger(), list(overrides or [])
    cfg = load_config(params, profile=profile, overrides=stage_overrides(flag, overrides))
    search.storage(cfg.tracking)  # create the Optuna tables once: workers creating them at once race
    os.environ.pop("MLFLOW_RUN_ID", None)
    with tracking.stage_run(cfg, stage) as parent:
        parent_id = parent.info.run_id
        mlflow.set_tags(
            {"mlflow.runName": f"{stage}-fanout", "medgen.front_door": "fanout", "medgen.workers": str(workers)}
        )
        task_overrides = stage_overrides(flag, overrides, parent_id)
        stage_task("prepare").submit("prepare", params, profile, task_overrides).result()
        opener = getattr(stages.module(stage), "open_search", None)
        if opener is not None:  # queue the study's fixed trials once, before workers that would race to do it
            opener(load_config(params, profile=profile, overrides=task_overrides))
        started = time.perf_counter()
        runs = dispatch(
            stage,
            workers,
            deployment or flag,
            {
                "stage": stage,
                "flag": flag,
                "profile": profile,
                "overrides": overrides,
                "parent_run_id": parent_id,
                "params": params,
            },
        )
        logger.info("parent MLflow run %s; %d search runs on the pool: %s", parent_id, workers, [r.name for r in runs])
        states = wait_for([r.id for r in runs], timeout_s)
        searched = time.perf_counter()
        if any(state != "Completed" for state in states.values()):
            logger.warning("search runs not completed: %s (the finishing run tops the study up)", states)
        metrics = stage_task(stage).submit(stage, params, profile, task_overrides).result()
        finished = time.perf_counter()
        seconds = {"search": round(searched - started, 1), "finish": round(finished - searched, 1)}
        mlflow.log_metrics({f"seconds_{k}": v for k, v in seconds.items()})
    logger.info("fan-out of %s: %s; seconds %s", stage, states, seconds)
    return {"parent_run_id": parent_id, "search_runs": states, "seconds": seconds, "metrics": metrics}
