"""Cross-validated recipes and the ensemble they make (issue #11).

A candidate (a recipe with an lr and weight decay) is scored by repeated stratified K-fold cross-validation
on train+val: each fold model trains on the other folds for a fixed schedule (no early stopping, so the
held-out fold is never looked at before it is predicted) and predicts its held-out fold. The score is the
out-of-fold AUC (mean over repeats). The chosen candidate's fold models are the product: an
`EnsembleClassifier` that averages their softmax over test-time views, exported as one ONNX graph.

Fold fits are independent and seeded by (repeat, fold), so they run in `jobs` spawned processes with one
torch thread each and give the same weights as in one process on CPU (tests/unit/test_ensemble.py checks it).
On CUDA the processes share the GPU: a 28 px ResNet-18 step is launch-bound, so one process leaves it mostly idle.
"""

from __future__ import annotations

import logging
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medgen import data, metrics, workers
from medgen.config import ClassifyConfig
from medgen.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    """One fit: repeat r (its split seed), fold index, the seed of its fit, the rows it trains on and holds out."""

    repeat: int
    fold: int
    seed: int
    train: np.ndarray
    held_out: np.ndarray


def recipe(cfg: ClassifyConfig, name: str) -> ClassifyConfig:
    """The classify section with recipe `name` applied (no named recipes: the section is the one, "default")."""
    return cfg.recipe(name) if cfg.recipes else cfg


def candidates(cfg: ClassifyConfig) -> tuple[list[str], list[dict[str, Any]]]:
    """Recipe names and the study's fixed trials: each named recipe with its own lr and weight decay, in order,
    at most n_trials of them."""
    names = list(cfg.recipes) or ["default"]
    fixed = [{"recipe": n, "lr": recipe(cfg, n).lr, "weight_decay": recipe(cfg, n).weight_decay} for n in names]
    return names, fixed[: cfg.n_trials]


def pool_split(dataset: data.Dataset) -> data.Split:
    """train + val as one labelled pool (cross-validation replaces the fixed validation split)."""
    return data.Split(
        np.concatenate([dataset.train.images, dataset.val.images]),
        np.concatenate([dataset.train.labels, dataset.val.labels]),
    )


def make_folds(labels: np.ndarray, k: int, repeats: int, seed: int) -> list[Fold]:
    """Stratified K-fold splits, `repeats` times with split seeds seed, seed+1, ...; fit seeds are distinct."""
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if smallest < k:
        from medgen.errors import MedgenError

        raise MedgenError(f"classify.cv_folds={k} but the smallest class has {smallest} images in train+val")
    folds = []
    for r in range(repeats):
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed + r)
        for f, (train, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
            folds.append(Fold(r, f, (seed + r) * 1000 + f, train, held))
    return folds


def _fit_fold(
    cfg: ClassifyConfig, pool: data.Split, n_classes: int, fold: Fold, hparams: dict, device: str
) -> dict[str, Any]:
    """Train on the fold's rows for cfg.search_epochs, predict its held-out rows; weights as CPU tensors."""
    from medgen.classification import fit_classifier, predict_proba

    train = data.Split(pool.images[fold.train], pool.labels[fold.train])
    held = data.Split(pool.images[fold.held_out], pool.labels[fold.held_out])
    model, history = fit_classifier(cfg, train, None, n_classes, fold.seed, device, hparams, epochs=cfg.search_epochs)
    probs = predict_proba(model, held, device)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {
        "fold": fold,
        "state": state,
        "init_kwargs": history["init_kwargs"],
        "rows": history["rows"],
        "probs": probs,
    }


def fit_folds(
    cfg: ClassifyConfig,
    pool: data.Split,
    n_classes: int,
    folds: list[Fold],
    hparams: dict,
    device: torch.device | str,
    label: str = "folds",
) -> list[dict[str, Any]]:
    """Every fold's fit, in fold order; in `cfg.jobs` processes (medgen.workers: they die with the stage, kill -9
    included, and are terminated and reaped when it stops) when more than one, on CPU or sharing a GPU."""
    device = str(device)
    jobs = min(cfg.jobs, len(folds))
    results: dict[int, dict] = {}
    with Progress(len(folds), label, unit="fits") as progress:
        if jobs <= 1:
            for i, fold in enumerate(folds):
                results[i] = _fit_fold(cfg, pool, n_classes, fold, hparams, device)
                progress.update(len(results), repeat=fold.repeat, fold=fold.fold)
        else:
            with workers.process_pool(jobs, max(1, cfg.threads)) as executor:  # one thread each unless set
                pending = {
                    executor.submit(_fit_fold, cfg, pool, n_classes, f, hparams, device): i for i, f in enumerate(folds)
                }
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        results[pending.pop(future)] = future.result()
                        progress.update(len(results))
    return [results[i] for i in range(len(folds))]


def out_of_fold(pool: data.Split, fits: list[dict[str, Any]], n_classes: int) -> list[np.ndarray]:
    """One (N, n_classes) out-of-fold probability array per repeat, rows in pool order (NaN: no fit held it out)."""
    repeats = 1 + max(f["fold"].repeat for f in fits)
    oof = [np.full((len(pool), n_classes), np.nan) for _ in range(repeats)]
    for fit in fits:
        oof[fit["fold"].repeat][fit["fold"].held_out] = fit["probs"]
    return oof


def screened(folds: list[Fold], n: int) -> list[Fold]:
    """The folds every candidate is scored on: the first n (repeat 0 first), or all when n is 0 or >= their number."""
    return list(folds[:n]) if 0 < n < len(folds) else list(folds)


def cv_scores(labels: np.ndarray, oof: list[np.ndarray]) -> dict[str, float]:
    """Out-of-fold acc, auc, balanced_acc over the rows some fit held out: per repeat, then the mean over
    repeats (`cv_<metric>`)."""
    per_repeat = []
    for probs in oof:
        seen = ~np.isnan(probs).any(axis=1)
        if seen.any():
            per_repeat.append(metrics.classification_metrics(labels[seen], probs[seen]))
    return {f"cv_{m}": float(np.mean([s[m] for s in per_repeat])) for m in ("auc", "acc", "balanced_acc")}


def assemble(fits: list[dict[str, Any]], views: tuple[str, ...]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The fold models as one EnsembleClassifier (eval mode) and its constructor kwargs."""
    from medgen.models.classifier import EnsembleClassifier

    member_kwargs = fits[0]["init_kwargs"]
    member_class = "EncoderClassifier" if "encoder_class" in member_kwargs else "ResNetClassifier"
    kwargs = {
        "member_class": member_class,
        "member_kwargs": member_kwargs,
        "n_members": len(fits),
        "views": tuple(views),
    }
    model = EnsembleClassifier(**kwargs)
    for member, fit in zip(model.members, fits):
        member.load_state_dict(fit["state"])
    return model.eval(), kwargs


def members(fits: list[dict[str, Any]]) -> list[dict[str, int]]:
    """What each member is: repeat, fold, fit seed, training rows."""
    return [
        {"repeat": f["fold"].repeat, "fold": f["fold"].fold, "seed": f["fold"].seed, "n_train": len(f["fold"].train)}
        for f in fits
    ]
