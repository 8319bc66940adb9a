"""Prefect front door: one task per pipeline stage, chained by flows. No ML logic lives here.

Every task calls `medgen.stages.get(<name>)(cfg)`, the same function `dvc repro` (`medgen stage <name>`)
and `medgen pipeline` call, with the config loaded from the same params.yaml: the three front doors
write the same files. Tasks are built from `medgen.stages.STAGES` when a flow runs, so a stage added
there joins the flows without touching this file.

Prefect specifics (see DESIGN.md, "Known traps"):
* MLflow's active run is thread-local and Prefect may run a task in another thread, so the flow opens
  the parent run itself and hands its id to each task as the override `tracking.parent_run_id=<id>`.
* Tasks take strings (params path, profile, overrides), never tensors or configs, and caching is off:
  a stage decides itself what it may reuse (its files, its Optuna study).
* Retries are for transient failures only (I/O, locked databases, a tracking server that hiccups).
  A MedgenError (bad config, bad data) fails at once: retrying cannot fix it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from medgen import stages, tracking
from medgen.config import Config
from medgen.errors import MedgenError, TransientError
from medgen.params import load_config

PARAMS_FILE = "params.yaml"
RETRIES = 2
RETRY_DELAY_S = 5
# Exceptions that are bugs, not weather: retrying them only wastes a stage's run time.
_PERMANENT = (MedgenError, TypeError, AttributeError, NameError, ImportError, AssertionError, NotImplementedError)


def is_transient(exc: BaseException | None) -> bool:
    """True when retrying the stage may help (anything but a user error or a programming error; a
    TransientError, e.g. an unreachable tracking server, is a MedgenError worth retrying)."""
    if isinstance(exc, TransientError):
        return True
    return exc is not None and isinstance(exc, Exception) and not isinstance(exc, _PERMANENT)


def _retry_on_transient(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry_condition_fn: retry only when the failure was transient."""
    return is_transient(state.result(raise_on_failure=False))


def stage_overrides(flag: str | None, overrides: Sequence[str], parent_run_id: str = "") -> list[str]:
    """The overrides a task hands to load_config: the flag first, the user's, then the parent run."""
    head = [f"data.flag={flag}"] if flag else []
    tail = [f"tracking.parent_run_id={parent_run_id}"] if parent_run_id else []
    return [*head, *overrides, *tail]


def run_stage(name: str, params: str, profile: str | None, overrides: list[str]) -> dict[str, Any]:
    """The body of every stage task: load params.yaml with the overrides, run the stage."""
    cfg = load_config(params, profile=profile, overrides=overrides)
    get_run_logger().info("stage %s (profile %s, flag %s)", name, cfg.profile, cfg.data.flag)
    return stages.get(name)(cfg)


def stage_task(name: str) -> Any:
    """The Prefect task for stage `name` (named like the stage: module, dvc stage, MLflow run)."""
    stages.get(name)  # an unknown name fails here, before a task exists
    return task(
        run_stage,
        name=name,
        task_run_name=name,
        retries=RETRIES,
        retry_delay_seconds=RETRY_DELAY_S,
        retry_condition_fn=_retry_on_transient,
        cache_policy=NONE,
    )


def metrics_paths(cfg: Config, names: Sequence[str] | None = None) -> dict[str, str]:
    """Stage -> its metrics JSON path (each stage section's `metrics` param), as dvc.yaml declares them."""
    tree = cfg.to_dict()
    return {s: tree[s]["metrics"] for s in select(names) if isinstance(tree.get(s), dict) and "metrics" in tree[s]}


def select(names: Sequence[str] | None) -> list[str]:
    """`names` in pipeline order (all stages when None); unknown names fail before anything runs."""
    for name in names or ():
        stages.get(name)
    return [s for s in stages.STAGES if names is None or s in names]


def run_stages(
    names: Sequence[str], flag: str | None, profile: str | None, overrides: Sequence[str], params: str, run_name: str
) -> dict[str, Any]:
    """Run `names` in order, each a task, all nested under one parent MLflow run `run_name`.

    The parent run ends FAILED when a stage fails (the exception propagates, so the flow run fails too).
    """
    import mlflow

    cfg: Config = load_config(params, profile=profile, overrides=stage_overrides(flag, overrides))
    # Nesting goes through the explicit id, never through an inherited environment or active run.
    os.environ.pop("MLFLOW_RUN_ID", None)
    results: dict[str, Any] = {}
    with tracking.stage_run(cfg, run_name) as parent:
        parent_id = parent.info.run_id
        mlflow.set_tags({"medgen.stages": ",".join(names), "medgen.front_door": "prefect"})
        get_run_logger().info("parent MLflow run %s (experiment medgen/%s/%s)", parent_id, cfg.data.flag, run_name)
        task_overrides = stage_overrides(flag, overrides, parent_id)
        for name in names:
            # .submit() + .result(): runs in Prefect's task runner thread, re-raises a stage's failure.
            future = stage_task(name).submit(name, params, profile, task_overrides)
            results[name] = future.result()
    return {"parent_run_id": parent_id, "stages": results}


@flow(name="medgen-pipeline", log_prints=True)
def medgen_pipeline(
    flag: str = "breastmnist",
    profile: str | None = None,
    overrides: list[str] | None = None,
    only: list[str] | None = None,
    params: str = PARAMS_FILE,
) -> dict[str, Any]:
    """The whole pipeline (or just the stages in `only`, in pipeline order) on dataset `flag`.

    profile: a profile from params.yaml (`smoke` for a quick run); None = params.yaml's `profile`.
    overrides: `section.key=value` strings, the syntax of `medgen -S` and `dvc exp run -S`.
    """
    return run_stages(select(only), flag, profile, overrides or [], params, "pipeline")


def study_stages(stage: str) -> list[str]:
    """A single study needs the prepared data first; `prepare` is cheap and a no-op for DVC's outputs."""
    stages.get(stage)
    return select(["prepare", stage])


@flow(name="medgen-represent", log_prints=True)
def represent_flow(
    flag: str = "breastmnist", profile: str | None = None, overrides: list[str] | None = None, params: str = PARAMS_FILE
) -> dict[str, Any]:
    """Only the representation study (prepare, then represent), under its own parent run."""
    return run_stages(study_stages("represent"), flag, profile, overrides or [], params, "represent-study")


@flow(name="medgen-generate", log_prints=True)
def generate_flow(
    flag: str = "breastmnist", profile: str | None = None, overrides: list[str] | None = None, params: str = PARAMS_FILE
) -> dict[str, Any]:
    """Only the generative study (prepare, then generate), under its own parent run."""
    return run_stages(study_stages("generate"), flag, profile, overrides or [], params, "generate-study")


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(medgen_pipeline(profile=sys.argv[1] if len(sys.argv) > 1 else None), indent=2, default=str))
