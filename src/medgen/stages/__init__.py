"""The pipeline, one module per stage, each exposing ``run(cfg: Config) -> dict`` (its metrics).

The order here is the pipeline order; dvc.yaml, the Prefect flow and the CLI use the same names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from medgen.errors import MedgenError

STAGES: tuple[str, ...] = ("prepare", "represent", "classify", "generate", "augment", "export")


def get(name: str) -> Callable[..., dict[str, Any]]:
    """The `run` function of stage `name`; unknown names are a MedgenError listing the known ones."""
    if name not in STAGES:
        raise MedgenError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
    return importlib.import_module(f"medgen.stages.{name}").run
