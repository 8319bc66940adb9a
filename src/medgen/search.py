"""Optuna plumbing shared by every searched stage: storage, study naming, resumption, MLflow nesting.

Same inputs, same outputs: a study's results are a function of what defines the search, never of the
history of earlier runs.
* Name = `<flag>-<stage>[-<suffix>]-<hash>`, the hash over everything that defines the search (the stage's
  config section minus run-size keys, the seed, the prepared data's content, the device type). Change any
  of them and a new study starts; change nothing and the stored one is resumed.
* `n_trials` is the size a study must reach (finished = COMPLETE + PRUNED trials), not an increment: a
  re-run with unchanged params runs no trial and reports the same best; more search = a bigger n_trials.
* Trial i's sampler is seeded from (seed, i, worker): its parameters depend only on the trials before it,
  so a study killed mid-way and resumed reaches the same trials as an uninterrupted one.
* A trial left RUNNING by a dead process on this host (kill -9) is marked FAIL when the study is opened;
  FAIL trials are ignored by the sampler and the pruner and not counted, so the killed point is re-drawn.
  Trials of workers on other hosts are failed by Optuna's heartbeat and re-queued once with their params.
* Several workers share one target: a worker whose next trial would overshoot it waits for the trials
  others are running (failing stale ones by heartbeat, tracking.optuna_grace_s) until the study holds
  n_trials finished trials, so a killed worker's trial is retried by a live one before anyone returns.
  Which worker draws which point depends on timing: a fanned-out study is not point-for-point the same
  as a one-worker one (each worker's draws are still seeded: see TrialSeededSampler).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medgen import tracking
from medgen.config import Config, TrackingConfig
from medgen.owner import owner_alive, owner_id
from medgen.progress import Progress

log = logging.getLogger(__name__)
STORAGE_ENV = "MEDGEN_OPTUNA_STORAGE"
# Several workers on one study: give each a distinct id (0, 1, ...) so their samplers differ; workers
# that ask for a trial at the same moment would otherwise draw the same seeded points.
WORKER_ENV = "MEDGEN_WORKER_ID"
OWNER_ATTR = "owner"  # user attr: "<host>:<pid>:<process start time>" of the process running the trial
WORKER_ATTR = "worker"  # user attr: $MEDGEN_WORKER_ID of the process running the trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Keys that size a run or name its files but do not change what a trial computes; never in the study hash.
RUN_SIZE_KEYS = frozenset(
    {
        "n_trials",
        "trials_classic",
        "trials_neural",
        "seeds",
        "metrics",
        "details",
        "plots_dir",
        "checkpoint",
        "feature_checkpoint",
        "encoder_checkpoint",
        "samples_dir",
        "device",
    }
)
Objective = Callable[[optuna.Trial], float]
SAMPLERS = ("tpe", "random")  # random: every trial a seeded uniform draw (TPE never leaves its startup phase)
RANDOM_SEARCH = 2**31 - 1


def storage_url(cfg: TrackingConfig) -> str:
    """Optuna storage: $MEDGEN_OPTUNA_STORAGE, else tracking.optuna_storage, else <store_dir>/optuna.db."""
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


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (the prepared data's identity in a study hash)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def definition(cfg: Config, section: str, ignore: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """Everything that defines a stage's search: its config section (minus run-size keys and `ignore`),
    the seed, the prepared data's sha256 and the device type; `extra` adds stage-specific items."""
    from medgen.training import pick_device

    skip = RUN_SIZE_KEYS | set(ignore)
    section_cfg = getattr(cfg, section)
    values = {k: v for k, v in asdict(section_cfg).items() if k not in skip}
    device = pick_device(getattr(section_cfg, "device", "auto")).type
    prepared = cfg.data.prepared_path
    data = file_digest(prepared) if prepared.exists() else "missing"
    return {"section": values, "seed": cfg.seed, "data": data, "size": cfg.data.size, "device": device, **extra}


def definition_hash(spec: dict[str, Any]) -> str:
    """10 hex digits identifying a search definition (sorted JSON, sha1)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode(), usedforsecurity=False).hexdigest()[:10]


def study_name(flag: str, stage: str, suffix: str = "", spec: dict[str, Any] | None = None) -> str:
    """<flag>-<stage>[-<suffix>][-<hash of spec>]: a study per search definition."""
    parts = [flag, stage, *([suffix] if suffix else []), *([definition_hash(spec)] if spec is not None else [])]
    return "-".join(parts)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random state is re-seeded for every trial from (seed, trial index, worker).

    The index is the number of finished trials when the trial starts, so trial i's draw depends only on
    the finished trials before it: a resumed study repeats an uninterrupted one point for point.
    """

    def __init__(self, seed: int, worker: int = 0, n_startup_trials: int = 5) -> None:
        # n_startup_trials larger than any study (RANDOM_SEARCH) makes every trial TPE's seeded random draw
        self.seed, self.worker, self.n_startup_trials = seed, worker, n_startup_trials
        self._inner = self._tpe(0)

    def _tpe(self, index: int) -> optuna.samplers.TPESampler:
        derived = (self.seed * 1_000_003 + index * 7_919 + self.worker * 1_000_000_007) % (2**32)
        return optuna.samplers.TPESampler(seed=derived, n_startup_trials=self.n_startup_trials)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        index = len(study.get_trials(deepcopy=False, states=FINISHED))
        self._inner = self._tpe(index)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:  # called by Optuna for n_jobs > 1; our seeds are per trial already
        pass


# The owner/liveness helpers are shared with MLflow's ghost sweep (medgen.stores) and the stage lock.
_owner = owner_id


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose owning process on this host is gone; returns their numbers.

    Another worker's dead trial is queued once more with its parameters (as the heartbeat path does for
    other hosts). A dead trial of this worker number (a killed single-machine run, resumed) is not: the
    per-trial seeded sampler draws the same point again as the next trial, so the resumed study repeats an
    uninterrupted one point for point (a queued copy would hold only the parameters drawn before the kill).
    """
    dead = []
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get(OWNER_ATTR)
        if isinstance(owner, str) and owner_alive(owner) is False:
            failed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            if failed and trial.user_attrs.get(WORKER_ATTR, 0) != worker_id():
                retry(study, study._storage.get_trial(trial._trial_id))
            dead.append(trial.number)
    if dead:
        log.warning("study %s: trial(s) %s were left RUNNING by a killed process; marked FAIL", study.study_name, dead)
    return dead


def _storage(url: str, heartbeat_s: int = 60, grace_s: int = 180) -> optuna.storages.RDBStorage:
    from medgen import stores

    # Table creation under a file lock (two processes on a fresh file raced); corrupt files, unreachable
    # servers and missing drivers are one line (medgen.stores).
    with stores.initialising(url, "Optuna storage"):
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            engine_kwargs=stores.engine_kwargs(url),
        )


def storage(cfg: TrackingConfig) -> optuna.storages.RDBStorage:
    """The configured Optuna storage (tables created on first use: do it once before starting workers)."""
    return _storage(storage_url(cfg), cfg.optuna_heartbeat_s, cfg.optuna_grace_s)


def open_study(
    cfg: Config,
    stage: str,
    spec: dict[str, Any],
    direction: str = "maximize",
    suffix: str = "",
    pruner: optuna.pruners.BasePruner | None = None,
    fixed: Sequence[dict[str, Any]] = (),
    sampler: str = "tpe",
) -> optuna.Study:
    """Create or resume the study `<flag>-<stage>[-<suffix>]-<hash of spec>` in the configured storage.

    `spec` is what defines the search (see `definition`; it must include the sampler when that is not
    "tpe"). `fixed` are parameter sets that are always the first trials (e.g. a paper's defaults); they
    are queued again if a killed run lost them. `sampler`: "tpe" or "random" (SAMPLERS), both per-trial seeded.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    startup = RANDOM_SEARCH if sampler == "random" else 5
    study = optuna.create_study(
        study_name=study_name(cfg.data.flag, stage, suffix, spec),
        storage=storage(cfg.tracking),
        direction=direction,
        sampler=TrialSeededSampler(cfg.seed, worker_id(), startup),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        load_if_exists=True,
    )
    fail_dead_trials(study)
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    # a fixed set already queued, running (params not suggested yet: its fixed_params) or done is not queued again
    alive = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    present = [t.system_attrs.get("fixed_params") or t.params for t in study.get_trials(deepcopy=False, states=alive)]
    for params in list(fixed)[finished:]:
        if params not in present:
            study.enqueue_trial(dict(params))
    return study


def finished_trials(study: optuna.Study) -> int:
    """Trials of the study in a finished state (complete, pruned or failed)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _claimed(study: optuna.Study) -> int:
    """Finished trials plus those other workers are running now: what counts toward n_trials."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def _running_elsewhere(study: optuna.Study) -> list[int]:
    return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]


def _wait_for_others(study: optuna.Study, waited: list[int]) -> list[int]:
    """One poll while other workers hold the rest of the target: sleep, then fail trials whose heartbeat
    is stale (their retry is queued WAITING, and this worker runs it next). Returns the running trials."""
    running = _running_elsewhere(study)
    if running != waited:
        log.info("study %s: waiting for trial(s) %s running on other workers", study.study_name, running)
    interval = study._storage.get_heartbeat_interval() or 1
    time.sleep(min(5.0, max(0.5, interval / 2)))
    optuna.storages.fail_stale_trials(study)
    return running


def optimize(study: optuna.Study, objective: Objective, n_trials: int, parent_run_id: str) -> optuna.Study:
    """Run trials until the study holds `n_trials` finished (complete or pruned) ones. Trials other
    workers are running count toward the target; while they hold the rest of it this worker waits for
    them (a dead worker's trial is failed by heartbeat and retried here; see `fail_dead_trials` too).

    Each trial is a nested MLflow run under `parent_run_id`; its run id is stored as user attr
    `mlflow_run_id`; pruned trials are tagged `optuna.state=PRUNED` and their run ends FINISHED.
    """
    import mlflow

    def wrapped(trial: optuna.Trial) -> float:
        trial.set_user_attr(OWNER_ATTR, _owner())
        trial.set_user_attr(WORKER_ATTR, worker_id())
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

    done = finished_trials(study)
    log.info(
        "study %s: %d of %d trials finished, running %d", study.study_name, done, n_trials, max(0, n_trials - done)
    )
    progress = Progress(n_trials, f"search {study.study_name}", start=done)
    waited: list[int] = []
    while finished_trials(study) < n_trials:
        if _claimed(study) >= n_trials:
            waited = _wait_for_others(study, waited)
            continue
        study.optimize(wrapped, n_trials=1, gc_after_trial=True)
        done = finished_trials(study)
        last = study.get_trials(deepcopy=False, states=FINISHED)[-1]  # not a queued fixed trial
        best = best_value(study)
        progress.update(done, trial=last.number, state=last.state.name, value=last.value, best=best)
    progress.close()
    return study


@contextlib.contextmanager
def trial_parent(cfg: Config, stage: str) -> Iterator[str]:
    """The MLflow run a search-only run's trials nest under: tracking.parent_run_id (or $MEDGEN_PARENT_RUN_ID)
    when given, so every fan-out worker's trials sit under one parent; else a new stage run tagged
    `medgen.phase=search`."""
    import mlflow

    parent = cfg.tracking.parent_run_id or os.environ.get(tracking.PARENT_ENV, "")
    if parent:
        tracking.configure(cfg.tracking)
        yield parent
        return
    with tracking.stage_run(cfg, stage) as run:
        mlflow.set_tag("medgen.phase", "search")
        yield run.info.run_id


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE trials."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_value(study: optuna.Study) -> float | None:
    """The best objective value over complete trials; None when none completed."""
    return float(study.best_value) if completed(study) else None


def counts(study: optuna.Study) -> dict[str, int]:
    """Finished trials by state (FAIL trials of killed runs are not part of the result)."""
    states = [t.state for t in study.get_trials(deepcopy=False, states=FINISHED)]
    return {
        "trials": len(states),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
    }


def best_params(study: optuna.Study) -> dict[str, Any]:
    """Parameters of the best complete trial; a study with none is an error, not a silent default."""
    from medgen.errors import MedgenError

    if not completed(study):
        raise MedgenError(f"study {study.study_name}: no completed trial (all pruned or failed); raise n_trials")
    return dict(study.best_trial.params)
