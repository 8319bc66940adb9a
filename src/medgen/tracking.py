"""MLflow conventions: store location, experiment and run naming, tags, nested runs, artifacts.

Nothing here runs at import; `configure` is called by a stage's run() (via `stage_run`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgen.config import Config, TrackingConfig

PARENT_ENV = "MEDGEN_PARENT_RUN_ID"  # set by `medgen pipeline` / the Prefect flow for nesting
_METRIC_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow metric names allow only these


def tracking_uri(cfg: TrackingConfig) -> str:
    """$MLFLOW_TRACKING_URI wins, then tracking.mlflow_uri, then sqlite under tracking.store_dir."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow_uri
    if uri:
        return uri
    return f"sqlite:///{Path(cfg.store_dir).resolve() / 'mlflow.db'}"


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the configured store (creating a local sqlite store's folder); returns the URI."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    store_ready(uri)
    return uri


def experiment_name(flag: str, stage: str) -> str:
    """medgen/<flag>/<stage>: the MLflow experiment of a stage."""
    return f"medgen/{flag}/{stage}"


def ensure_experiment(cfg: Config, stage: str) -> str:
    """Experiment id for medgen/<flag>/<stage>; local stores keep artifacts in <store_dir>/artifacts."""
    import mlflow

    name = experiment_name(cfg.data.flag, stage)
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if tracking_uri(cfg.tracking).startswith("sqlite:///"):
        location = (Path(cfg.tracking.store_dir).resolve() / "artifacts" / name.replace("/", "_")).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created concurrently by another worker
        return mlflow.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    """HEAD's commit hash, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def base_tags(cfg: Config, stage: str) -> dict[str, str]:
    """Tags every stage run carries: stage, flag, profile, device and git commit."""
    import torch

    return {
        "medgen.stage": stage,
        "medgen.flag": cfg.data.flag,
        "medgen.profile": cfg.profile,
        "medgen.device": "cuda" if torch.cuda.is_available() else "cpu",
        "mlflow.source.git.commit": git_commit(),
    }


def flat_params(cfg: Config, *sections: str) -> dict[str, Any]:
    """`section.key` -> value for the named sections (plus seed/profile), for mlflow.log_params."""
    tree = cfg.to_dict()
    params: dict[str, Any] = {"seed": cfg.seed, "profile": cfg.profile}
    for section in sections:
        for key, value in tree[section].items():
            params[f"{section}.{key}"] = value
    return params


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, params_sections: tuple[str, ...] = ()) -> Iterator[Any]:
    """One MLflow run per stage execution, nested under the active run, tracking.parent_run_id or
    $MEDGEN_PARENT_RUN_ID (in that order) when one is given.

    An exception inside the block marks the run FAILED and propagates.
    """
    import mlflow

    configure(cfg.tracking)
    experiment_id = ensure_experiment(cfg, stage)
    # Parent: the active run in this thread (`medgen pipeline`), else $MEDGEN_PARENT_RUN_ID (a Prefect
    # flow or another process). MLflow allows a parent in another experiment; the UI links them.
    active = mlflow.active_run()
    parent = None if active else (cfg.tracking.parent_run_id or os.environ.get(PARENT_ENV) or None)
    with (
        mlflow.start_run(
            experiment_id=experiment_id,
            run_name=stage,
            tags={**base_tags(cfg, stage), **owner_tags()},
            nested=active is not None,
            parent_run_id=parent,
        ) as run,
        killed_on_interrupt(),
    ):
        mlflow.log_params(flat_params(cfg, "data", *params_sections))
        yield run


@contextlib.contextmanager
def child_run(parent_run_id: str, name: str, params: dict[str, Any]) -> Iterator[Any]:
    """A run nested under parent_run_id (e.g. one Optuna trial under its stage run)."""
    import mlflow

    # The experiment comes from the parent, so this also works from threads with no active run
    # (Optuna n_jobs>1, Prefect task runners), where MLflow's thread-local nesting is lost.
    experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
    active = mlflow.active_run()
    nested = active is not None and active.info.run_id == parent_run_id
    with (
        mlflow.start_run(
            run_name=name, experiment_id=experiment_id, nested=nested, parent_run_id=parent_run_id, tags=owner_tags()
        ) as run,
        killed_on_interrupt(),
    ):
        if params:
            mlflow.log_params(params)
        yield run


def log_figure(fig: Any, artifact_path: str) -> None:
    """Log a matplotlib figure as a PNG artifact of the active run."""
    import mlflow

    mlflow.log_figure(fig, artifact_path)


def log_files(paths: list[Path], artifact_dir: str) -> None:
    """Log each file (its staged copy while the stage runs) under artifact_dir of the active run."""
    import mlflow

    from medgen.io import readable

    for path in paths:  # a file the running stage wrote is still staged (same name): log the new content
        mlflow.log_artifact(str(readable(path)), artifact_path=artifact_dir)


def log_dict(obj: dict[str, Any], artifact_file: str) -> None:
    """Log a dict as a JSON/YAML artifact of the active run."""
    import mlflow

    mlflow.log_dict(obj, artifact_file)


def numeric_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts to `a.b.c` -> float, dropping non-numbers (for mlflow.log_metrics); a list
    of numbers (an interval [lo, hi]) becomes `name.0`, `name.1`."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = _METRIC_NAME_BAD.sub("_", f"{prefix}{key}")  # e.g. arm "classic+synthetic"
        if isinstance(value, (list, tuple)):
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, dict):
            flat.update(numeric_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def register_onnx(onnx_path: Path, name: str, extra_files: list[Path] = ()) -> str:
    """Log an ONNX file as an MLflow model of the active run and register it as a new version of `name`;
    returns that version. Which alias it gets (`champion` or `candidate`) is medgen.registry's decision.
    Its requirements are given, not inferred: the ONNX flavour's pins (onnx, onnxruntime) and numpy, the list
    MLflow's inference finds, without its subprocess that loads the model (~4 s a model on 2 cores).
    """
    import mlflow
    import numpy
    import onnx

    from medgen.io import readable

    info = mlflow.onnx.log_model(
        onnx.load(str(readable(onnx_path))),
        name=Path(onnx_path).stem,
        registered_model_name=name,
        save_as_external_data=False,
        pip_requirements=[*mlflow.onnx.get_default_pip_requirements(), f"numpy=={numpy.__version__}"],
        extra_files=[str(readable(p)) for p in extra_files],
    )
    return str(info.registered_model_version)


# ---------------------------------------------------------------- reliability (docs/reliability.md)
def store_ready(uri: str) -> None:
    """Fail fast on an unreachable or corrupt store; create a fresh SQLite schema under a file lock."""
    from medgen import stores

    stores.mlflow_ready(uri)


def owner_tags() -> dict[str, str]:
    """`medgen.owner`: host, pid and start time of this process, so a later run can tell a run whose
    process was killed (left RUNNING forever) from a live one (medgen.stores.close_dead_runs)."""
    from medgen.owner import owner_id
    from medgen.stores import OWNER_TAG

    return {OWNER_TAG: owner_id()}


@contextlib.contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """Inside `mlflow.start_run`: Ctrl-C or SIGTERM ends the active run KILLED (MLflow would say FAILED)."""
    import mlflow

    try:
        yield
    except KeyboardInterrupt:
        if mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        raise
