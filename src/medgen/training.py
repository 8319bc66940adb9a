"""Pieces every fit loop shares: seeding, device choice, early stopping, self-describing checkpoints."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.io import write_file


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA). Called once at the top of every stage's run()."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU. 'cuda' without a GPU is an error, not a silent CPU run."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        from medgen.errors import ConfigError

        raise ConfigError(f"device={preference!r} but no CUDA device is available (use 'auto' or 'cpu')")
    return torch.device(preference)


@dataclass
class EarlyStopping:
    """Stop when the monitored value has not improved by min_delta for `patience` epochs."""

    patience: int
    mode: str = "max"  # "max" for accuracy/AUC, "min" for losses
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    _bad: int = field(default=0, repr=False)

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        delta = value - self.best if self.mode == "max" else self.best - value
        return delta > self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record one epoch's value; True means stop now."""
        if self.improved(value):
            self.best, self.best_epoch, self._bad = value, epoch, 0
        else:
            self._bad += 1
        return self._bad >= self.patience


def save_checkpoint(path: str | Path, module: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any], **extra: Any) -> Path:
    """{"state_dict", "config", "metrics", ...}: enough to rebuild and judge the model without the run."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    checkpoint = {"state_dict": state, "config": config, "metrics": metrics, **extra}
    return write_file(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """weights_only=True: checkpoints hold tensors and plain data, never pickled code."""
    from medgen.errors import MedgenError

    import pickle
    import zipfile

    path = Path(path)
    if not path.exists():
        raise MedgenError(f"{path}: checkpoint not found (run the stage that writes it first)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        # torch reports a truncated zip as RuntimeError('PytorchStreamReader failed ... directory. This is ...')
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__
        raise MedgenError(f"{path}: not a readable checkpoint (truncated or corrupt: {reason}); "
                          "re-run the stage that writes it") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MedgenError(f"{path}: not a medgen checkpoint (no state_dict)")
    return checkpoint


def save_model(
    path: str | Path, model: torch.nn.Module, init_kwargs: dict[str, Any], config: dict[str, Any],
    metrics: dict[str, Any], **extra: Any,
) -> Path:
    """A checkpoint that rebuilds its own module: class path + constructor kwargs + weights.

    Export and serving load any medgen model this way (`load_model`) without knowing its stage.
    init_kwargs must be plain data (numbers, strings, lists, dicts) so weights_only loading works.
    """
    cls = type(model)
    spec = {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": init_kwargs}
    return save_checkpoint(path, model, config=config, metrics=metrics, model=spec, **extra)


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", allowed_prefixes: tuple[str, ...] = ("medgen.",)
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the module saved by `save_model` (in eval mode) and return it with its checkpoint dict.

    Only classes under `allowed_prefixes` are imported: a checkpoint names code, it must not choose any.
    """
    import importlib

    from medgen.errors import MedgenError

    checkpoint = load_checkpoint(path, map_location)
    spec = checkpoint.get("model")
    if not isinstance(spec, dict) or "class" not in spec:
        raise MedgenError(f"{path}: not a medgen model checkpoint (no model class recorded)")
    if not spec["class"].startswith(allowed_prefixes):
        raise MedgenError(f"{path}: refusing to import model class {spec['class']!r}")
    module_name, _, class_name = spec["class"].rpartition(".")
    try:
        model = getattr(importlib.import_module(module_name), class_name)(**spec["kwargs"])
        model.load_state_dict(checkpoint["state_dict"])
    except (ImportError, AttributeError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:200]
        raise MedgenError(f"{path}: checkpoint does not rebuild its model {spec['class']} ({reason})") from None
    return model.to(map_location).eval(), checkpoint
