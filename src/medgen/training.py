"""The one training loop (`fit`) every trained model goes through, and what it stands on: seeding, device
choice, early stopping, self-describing checkpoints.

A model family plugs into the loop with a `Steps` object: `start_epoch` (train modes, freezing), `step` (one
optimiser step, or a GAN's D and G steps, on the rows of one batch) and `end_epoch` (the epoch's training
figures from its steps). The loop owns the rest: epochs, the shuffled batches, the validation callback, the
kept best weights and early stopping, Optuna reports and pruning, MLflow step metrics and the progress line.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.io import write_file
from medgen.progress import Progress


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA), and have cuDNN pick deterministic kernels (no autotuning):
    without that, the same classify fold fit run twice on an H200 differed by up to 1.4 in a weight after 3 epochs
    (tests/gpu). Called at the top of every stage's run() and of every fit, in worker processes too."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = True  # read by cuDNN alone: CPU arithmetic is unchanged
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU threads set to n inside the block, restored after: later stages in the same process
    (`medgen pipeline`) choose their own."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


class Steps:
    """What a model family supplies to the loop. Subclasses implement `step`; the others are optional."""

    def start_epoch(self, epoch: int) -> None:
        """Before the epoch's batches (train modes, freezing)."""

    def step(self, index: torch.Tensor, i: int) -> dict[str, float]:
        """One optimisation step on the rows `index` (batch i of the epoch); returns its figures."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, steps: list[dict[str, float]]) -> dict[str, float]:
        """The epoch's training figures from its steps' (default: the mean of each)."""
        return {key: float(np.mean([s[key] for s in steps])) for key in (steps[0] if steps else {})}


def run_epoch(
    steps: Steps,
    n: int,
    batch_size: int,
    epoch: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    min_batch: int = 2,
) -> dict[str, float]:
    """One shuffled pass over n rows: a permutation from `generator` (None: torch's global RNG) drawn on
    `device`, cut into batches of `batch_size`; a trailing batch below `min_batch` rows is skipped (batch norm
    cannot train on one sample) but still counts in the batch numbers `steps.step` sees."""
    steps.start_epoch(epoch)
    order = torch.randperm(n, generator=generator, device=device)
    done = []
    for i, start in enumerate(range(0, n, batch_size)):
        index = order[start : start + batch_size]
        if len(index) >= min_batch:
            done.append(steps.step(index, i))
    return steps.end_epoch(epoch, done)


@dataclass
class Loop:
    """How `fit` runs: epochs and batches, what it validates and keeps, where it reports."""

    epochs: int
    batch_size: int
    label: str  # progress line: "<label>: <epoch>/<epochs> epochs ..."
    generator: torch.Generator | None = None  # shuffling draws; None: torch's global RNG
    device: torch.device | str = "cpu"  # where the permutation is drawn
    min_batch: int = 2
    first_epoch: int = 0  # the number of the first epoch (MLflow step, Optuna step)
    eval_every: int = 1  # validate on epochs divisible by this, and on the last
    monitor: str | None = None  # validation figure reported to Optuna and chosen on
    mode: str = "max"
    worst: float = -math.inf  # stands in for a non-finite monitored value; an infinite one is never kept
    patience: int = 0  # early stopping after this many epochs without improvement (0: never)
    min_epochs: int = 0  # early stopping never ends a fit before this epoch number
    trial: Any = None  # optuna.Trial: per-epoch report of `monitor`, pruning
    log_mlflow: bool = True  # step metrics into the active MLflow run (if any)
    show: tuple[str, ...] | None = None  # row figures on the progress line (None: all; besides the best)


@dataclass
class Fitted:
    """What `fit` returns: one row per epoch ({"epoch", training figures, validation figures}), the best
    monitored value and its epoch (None and -1 without a monitor or a finite value)."""

    rows: list[dict[str, float]]
    best: float | None
    best_epoch: int


def fit(
    steps: Steps,
    n: int,
    loop: Loop,
    validate: Callable[[int], dict[str, float]] | None = None,
    keep: torch.nn.Module | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Fitted:
    """Train for loop.epochs epochs over n rows, validating with `validate(epoch)` on evaluation epochs.

    With `keep`, that module's weights at the best monitored epoch are restored at the end (early stopping by
    loop.patience). `on_epoch(epoch, row)` runs last in each epoch (figures, checkpoints). Raises
    optuna.TrialPruned when the trial's pruner says so.
    """
    stopper = EarlyStopping(patience=loop.patience or loop.epochs + 1, mode=loop.mode)
    rows, best_state = [], None
    last = loop.first_epoch + loop.epochs - 1
    with Progress(loop.epochs, loop.label, unit="epochs") as progress:
        for epoch in range(loop.first_epoch, last + 1):
            row = {
                "epoch": epoch,
                **run_epoch(steps, n, loop.batch_size, epoch, loop.generator, loop.device, loop.min_batch),
            }
            if validate is not None and (epoch % loop.eval_every == 0 or epoch == last):
                row.update(validate(epoch))
            rows.append(row)
            _report(row, loop)
            stop = False
            if loop.monitor in row:
                score = row[loop.monitor] if math.isfinite(row[loop.monitor]) else loop.worst
                if keep is not None and math.isfinite(score) and (best_state is None or stopper.improved(score)):
                    best_state = copy.deepcopy(keep.state_dict())
                stop = stopper.step(score, epoch) and epoch >= loop.min_epochs
            shown = {k: v for k, v in row.items() if k != "epoch" and (loop.show is None or k in loop.show)}
            progress.update(epoch - loop.first_epoch + 1, **shown, best=stopper.best, stopped="early" if stop else None)
            if on_epoch is not None:
                on_epoch(epoch, row)
            if stop:
                break
    if keep is not None and best_state is not None:
        keep.load_state_dict(best_state)
    return Fitted(rows, stopper.best, stopper.best_epoch)


def _report(row: dict[str, float], loop: Loop) -> None:
    """One epoch's figures to the active MLflow run and, during a search, the monitored one to Optuna."""
    import mlflow

    if loop.log_mlflow and mlflow.active_run() is not None:
        mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch" and math.isfinite(v)}, step=row["epoch"])
    if loop.trial is not None and loop.monitor in row:
        import optuna

        loop.trial.report(row[loop.monitor], row["epoch"])
        if loop.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {row['epoch']}: {loop.monitor}={row[loop.monitor]:.4g}")


def save_checkpoint(
    path: str | Path, module: torch.nn.Module, config: dict[str, Any], metrics: dict[str, Any], **extra: Any
) -> Path:
    """{"state_dict", "config", "metrics", ...}: enough to rebuild and judge the model without the run."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    checkpoint = {"state_dict": state, "config": config, "metrics": metrics, **extra}
    return write_file(path, lambda handle: torch.save(checkpoint, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """weights_only=True: checkpoints hold tensors and plain data, never pickled code."""
    import pickle
    import zipfile

    from medgen.errors import MedgenError

    path = Path(path)
    if not path.exists():
        raise MedgenError(f"{path}: checkpoint not found (run the stage that writes it first)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        # torch reports a truncated zip as RuntimeError('PytorchStreamReader failed ... directory. This is ...')
        text = str(exc).strip()
        reason = text.splitlines()[0].split(". ")[0][:200] if text else type(exc).__name__
        raise MedgenError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {reason}); re-run the stage that writes it"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise MedgenError(f"{path}: not a medgen checkpoint (no state_dict)")
    return checkpoint


def save_model(
    path: str | Path,
    model: torch.nn.Module,
    init_kwargs: dict[str, Any],
    config: dict[str, Any],
    metrics: dict[str, Any],
    **extra: Any,
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
