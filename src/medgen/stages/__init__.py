"""The pipeline, one module per stage, each exposing ``run(cfg: Config) -> dict`` (its metrics) and
``outputs(cfg: Config) -> list[medgen.outputs.Output]`` (the files and folders it writes, as dvc.yaml).

The order here is the pipeline order; dvc.yaml, the Prefect flow and the CLI use the same names.
`get(name)` is how every front door runs a stage: wrapped by medgen.runner (lock, output transaction,
up-front checks, ghost runs closed).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from medgen.errors import MedgenError

STAGES: tuple[str, ...] = ("prepare", "represent", "classify", "generate", "augment", "export")
# Stages whose Optuna search can be fanned out: their module also has ``search_only(cfg) -> dict`` (trials
# only, no outputs); ``run`` afterwards finishes the stage from the stored studies.
SEARCHED: tuple[str, ...] = ("represent", "classify")


def get(name: str) -> Callable[..., dict[str, Any]]:
    """Stage `name` as run(cfg) -> metrics, wrapped by medgen.runner.run_stage; unknown names are a
    MedgenError listing the known ones."""
    if name not in STAGES:
        raise MedgenError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")

    def run(cfg: Any) -> dict[str, Any]:
        from medgen.runner import run_stage

        return run_stage(name, cfg)

    run.__name__ = run.__qualname__ = f"run_{name}"
    return run


def module(name: str) -> ModuleType:
    """The module of stage `name` (imported on first use: stage modules import torch and MLflow)."""
    return importlib.import_module(f"medgen.stages.{name}")


def get_search(name: str) -> Callable[..., dict[str, Any]]:
    """The `search_only` function of a searched stage (see SEARCHED); others are a MedgenError. Not wrapped
    by the runner: search-only workers write no outputs and share the study, so they take no stage lock."""
    get(name)
    if name not in SEARCHED:
        raise MedgenError(f"stage {name!r} has no search to fan out (searched stages: {', '.join(SEARCHED)})")
    return module(name).search_only
