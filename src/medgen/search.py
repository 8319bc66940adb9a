"""Optuna plumbing shared by every searched stage: storage, study naming, resumption, MLflow nesting.

Studies live in one storage URL ($MEDGEN_OPTUNA_STORAGE, else tracking.optuna_storage, else
sqlite:///<store_dir>/optuna.db). Study name = `<flag>-<stage>[-<suffix>]`; re-running a stage loads
the study and adds `n_trials` new trials. Trials whose worker died (stale heartbeat) are marked FAILED
and re-queued once with the same parameters, so a killed run loses nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from medgen import tracking
from medgen.config import Config, TrackingConfig

STORAGE_ENV = "MEDGEN_OPTUNA_STORAGE"
# Several workers on one study: give each a distinct id (0, 1, ...) so their samplers differ; workers
# that open the study at the same moment would otherwise draw the same seeded points.
WORKER_ENV = "MEDGEN_WORKER_ID"
Objective = Callable[[optuna.Trial], float]


def storage_url(cfg: TrackingConfig) -> str:
    url = os.environ.get(STORAGE_ENV) or cfg.optuna_storage
    if url:
        return url
    return f"sqlite:///{Path(cfg.store_dir).resolve() / 'optuna.db'}"


def worker_id() -> int:
    """This process's worker number from $MEDGEN_WORKER_ID (0 when unset: a single worker)."""
    raw = os.environ.get(WORKER_ENV, "0") or "0"
    if not raw.isdigit():
        from medgen.errors import ConfigError

        raise ConfigError(f"${WORKER_ENV}: expected a worker number 0, 1, ..., got {raw!r}")
    return int(raw)


def study_name(flag: str, stage: str, suffix: str = "") -> str:
    return f"{flag}-{stage}" + (f"-{suffix}" if suffix else "")


def open_study(
    cfg: Config,
    stage: str,
    direction: str = "maximize",
    suffix: str = "",
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create or resume the study `<flag>-<stage>[-<suffix>]` in the configured storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg.tracking)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(
        url,
        heartbeat_interval=60,
        grace_period=180,
        failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
    )
    name = study_name(cfg.data.flag, stage, suffix)
    # Seed the sampler with the number of trials already stored: a resumed study must not replay the
    # random start-up points it already tried (that would duplicate trials). Worker k offsets by 10**6*k
    # so parallel workers never share a seed.
    try:
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        done = 0
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + done + 1_000_000 * worker_id(), n_startup_trials=5)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=sampler,
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        load_if_exists=True,
    )


def optimize(study: optuna.Study, objective: Objective, n_trials: int, parent_run_id: str) -> optuna.Study:
    """Run `n_trials` new trials, each a nested MLflow run under `parent_run_id`.

    The trial's MLflow run id is stored as user attr `mlflow_run_id`; pruned trials are tagged
    `optuna.state=PRUNED` and their run ends FINISHED (they are not failures).
    """
    import mlflow

    def wrapped(trial: optuna.Trial) -> float:
        pruned = False
        with tracking.child_run(parent_run_id, f"{study.study_name}-{trial.number}", {}) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.set_tags({"optuna.study": study.study_name, "optuna.trial": str(trial.number)})
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                pruned = True
            mlflow.log_params(trial.params)
            mlflow.set_tag("optuna.state", "PRUNED" if pruned else "COMPLETE")
            if not pruned:
                mlflow.log_metric("objective", float(value))
        if pruned:
            raise optuna.TrialPruned()
        return value

    logging.getLogger(__name__).info("study %s: %d stored, running %d more", study.study_name, len(study.trials), n_trials)
    study.optimize(wrapped, n_trials=n_trials, gc_after_trial=True)
    return study


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Parameters of the best complete trial; a study with none is an error, not a silent default."""
    from medgen.errors import MedgenError

    if not completed(study):
        raise MedgenError(f"study {study.study_name}: no completed trial (all pruned or failed); raise n_trials")
    return dict(study.best_trial.params)
