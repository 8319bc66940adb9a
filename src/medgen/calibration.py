"""Calibration of the served classifier (issue #18): how far its probabilities are from outcome frequencies,
and the post-hoc calibrator baked into the exported graph.

Measures (labels (N,), probabilities (N, K)):
  * ECE: 15 equal-width bins of the top probability; sum over bins of |accuracy - mean confidence| weighted by
    the bin's share of images (Guo et al. 2017).
  * Brier score: mean over images of sum_k (p_k - 1[y = k])^2 (0 best, 2 worst).
  * NLL: mean -log p_y (probabilities clipped at 1e-12).
Each with the 2.5-97.5 percentile interval of the same stratified image bootstrap as every other test figure
(medgen.stats.draw).
  * Consistency resampling (Broecker & Smith 2007): the ECE the same probabilities would show on as many images
    if they were perfectly calibrated (labels drawn from the probabilities themselves), and the share of those
    draws at or above the observed ECE: a p-value for "these probabilities are calibrated". The 15-bin ECE is
    biased upward on a small set: on BreastMNIST's 156 test images a perfectly calibrated model scores ~0.06.

Calibrators act on the ensemble's log-probabilities z (N, K): "temperature" z / T (Guo et al.; every ranking
and argmax unchanged), "bias" z / T + b (vector scaling with one shared scale; for two classes Platt scaling:
the decision threshold moves), "none". They are fitted by NLL on out-of-fold predictions of the members (each
image predicted by the fold model that never trained on it; test is never used) and the kind is chosen by
5-fold cross-validated NLL on those predictions, the simpler kind first among equals: a rule fixed in code,
before any run it judges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medgen import stats

BINS = 15
KINDS = ("none", "temperature", "bias")
CV_FOLDS = 5
CV_SEED = 0
CONSISTENCY_DRAWS = 4000


def _bins(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Bin index 0..bins-1 of each confidence in (0, 1]: bin b holds (b/bins, (b+1)/bins]."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def weighted_scores(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """ece, brier and nll of probs (N, K) under resample weights (B, N): (B,) each."""
    labels, probs, weights = np.asarray(labels), np.asarray(probs, dtype=np.float64), np.asarray(weights, float)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    onehot = np.eye(BINS)[_bins(confidence)]  # (N, BINS)
    total = weights.sum(axis=1)
    gaps = weights @ (onehot * (correct - confidence)[:, None])  # (B, BINS): sum of (acc - conf) per bin
    truth = np.eye(probs.shape[1])[labels]
    per_image = {
        "brier": ((probs - truth) ** 2).sum(axis=1),
        "nll": -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)),
    }
    return {"ece": np.abs(gaps).sum(axis=1) / total, **{k: weights @ v / total for k, v in per_image.items()}}


def scores(labels: np.ndarray, probs: np.ndarray, suffix: str = "", weights: np.ndarray | None = None) -> dict:
    """{ece, ece_ci95, brier, brier_ci95, nll, nll_ci95} (keys + suffix) on the whole set with bootstrap intervals."""
    weights = stats.draw(np.asarray(labels)) if weights is None else weights
    full = weighted_scores(labels, probs, np.ones((1, len(labels))))
    boot = weighted_scores(labels, probs, weights)
    out: dict[str, Any] = {}
    for name in ("ece", "brier", "nll"):
        out[f"{name}{suffix}"] = float(full[name][0])
        out[f"{name}{suffix}_ci95"] = [float(v) for v in np.percentile(boot[name], [2.5, 97.5])]
    return out


def consistency(probs: np.ndarray, observed_ece: float, draws: int = CONSISTENCY_DRAWS, seed: int = 0) -> dict:
    """{ece_if_calibrated, ece_if_calibrated_ci95, ece_calibration_p} for probs (N, K): see the module docstring.
    Confidences and bins stay fixed; only which images are right changes between draws."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0:
        raise ValueError(f"consistency needs probabilities (N, K); got {probs.shape}")
    rng = np.random.default_rng(seed)
    cumulative, confidence, predicted = probs.cumsum(axis=1), probs.max(axis=1), probs.argmax(axis=1)
    onehot = np.eye(BINS)[_bins(confidence)]
    chunk = max(1, 4_000_000 // probs.size)  # draws at a time: bounded memory on a large test set
    ece = []
    for start in range(0, draws, chunk):
        u = rng.random((min(chunk, draws - start), len(probs), 1))
        drawn = np.minimum((u > cumulative[None]).sum(axis=2), probs.shape[1] - 1)  # labels (draws, N)
        gaps = ((drawn == predicted[None]) - confidence[None]) @ onehot  # (draws, BINS): sum of (acc - conf)
        ece.append(np.abs(gaps).sum(axis=1) / len(probs))
    ece = np.concatenate(ece)
    return {
        "ece_if_calibrated": float(ece.mean()),
        "ece_if_calibrated_ci95": [float(v) for v in np.percentile(ece, [2.5, 97.5])],
        "ece_calibration_p": float(np.mean(ece >= observed_ece - 1e-12)),
    }


def reliability(labels: np.ndarray, probs: np.ndarray) -> list[dict[str, float]]:
    """Per non-empty bin: its range, image count, mean confidence and accuracy (the reliability diagram)."""
    confidence = np.asarray(probs).max(axis=1)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(labels)
    index = _bins(confidence)
    return [
        {
            "low": b / BINS,
            "high": (b + 1) / BINS,
            "n": int((index == b).sum()),
            "confidence": float(confidence[index == b].mean()),
            "accuracy": float(correct[index == b].mean()),
        }
        for b in range(BINS)
        if (index == b).any()
    ]


def apply(log_probs: np.ndarray, calibrator: dict[str, Any]) -> np.ndarray:
    """Probabilities (N, K) from log-probabilities (N, K) through a fitted calibrator (as the graph does)."""
    z = np.asarray(log_probs, dtype=np.float64)
    if calibrator["kind"] != "none":
        z = z / calibrator["temperature"] + np.asarray(calibrator["bias"])
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _fit(kind: str, log_probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Parameters of one calibrator kind minimising NLL on (log_probs, labels); deterministic (float64 L-BFGS)."""
    k = log_probs.shape[1]
    if kind == "none":
        return {"kind": "none", "temperature": 1.0, "bias": [0.0] * k}
    z, y = torch.from_numpy(np.asarray(log_probs, np.float64)), torch.from_numpy(np.asarray(labels, np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=kind == "bias")
    params = [log_t, bias] if kind == "bias" else [log_t]
    optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=200, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * torch.exp(-log_t) + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    centred = (bias - bias.mean()).detach().numpy()  # softmax ignores a shared shift: report the centred one
    return {"kind": kind, "temperature": float(torch.exp(log_t).item()), "bias": [float(v) for v in centred]}


def _nll(log_probs: np.ndarray, labels: np.ndarray, calibrator: dict[str, Any]) -> float:
    probs = apply(log_probs, calibrator)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def choose(log_probs: np.ndarray, labels: np.ndarray, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """The calibrator with the lowest 5-fold cross-validated NLL on out-of-fold log-probabilities (N, K), refit on
    all of them; ties go to the simpler kind (order of `kinds`). Adds `cv_nll` {kind: value} and `fitted_on`.
    Fewer folds when a class has fewer than 5 predictions; "none" when one has fewer than 2."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    folds = min(CV_FOLDS, int(np.bincount(labels).min()) if len(labels) else 0)  # a tiny class: fewer folds
    if folds < 2:  # some class has < 2 held-out predictions: nothing to cross-validate a calibrator on
        note = f"not calibrated: a class has {folds} out-of-fold predictions (cross-validation needs >= 2)"
        return {**_fit("none", log_probs, labels), "cv_nll": {}, "fitted_on": note}
    splits = StratifiedKFold(folds, shuffle=True, random_state=CV_SEED).split(log_probs, labels)
    held: dict[str, list[float]] = {kind: [] for kind in kinds}
    for train, test in splits:
        for kind in kinds:
            fitted = _fit(kind, log_probs[train], labels[train])
            held[kind].append(_nll(log_probs[test], labels[test], fitted) * len(test))
    cv_nll = {kind: float(np.sum(v) / len(labels)) for kind, v in held.items()}
    best = min(kinds, key=lambda kind: (round(cv_nll[kind], 6), kinds.index(kind)))
    return {**_fit(best, log_probs, labels), "cv_nll": cv_nll, "fitted_on": f"{len(labels)} out-of-fold predictions"}
