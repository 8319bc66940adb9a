"""The pipeline, one module per stage, each exposing ``run(cfg: Config) -> dict`` (its metrics).

The order here is the pipeline order; dvc.yaml, the Prefect flow and the CLI use the same names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medgen.errors import MedgenError

STAGES: tuple[str, ...] = ("prepare", "represent", "classify", "generate", "augment", "export")
# Stages whose Optuna search can be fanned out: their module also has ``search_only(cfg) -> dict`` (trials
# only, no outputs); ``run`` afterwards finishes the stage from the stored studies.
SEARCHED: tuple[str, ...] = ("represent", "classify")


def get(name: str) -> Callable[..., dict[str, Any]]:
    """The `run` function of stage `name`; unknown names are a MedgenError listing the known ones."""
    if name not in STAGES:
        raise MedgenError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    return importlib.import_module(f"medgen.stages.{name}").run


def get_search(name: str) -> Callable[..., dict[str, Any]]:
    """The `search_only` function of a searched stage (see SEARCHED); others are a MedgenError."""
    get(name)
    if name not in SEARCHED:
        raise MedgenError(f"stage {name!r} has no search to fan out (searched stages: {', '.join(SEARCHED)})")
    return importlib.import_module(f"medgen.stages.{name}").search_only
