"""Uncertainty on every reported test number, and paired comparisons decided by a rule fixed before any run.

The rule (docs/statistics.md; written before any full run was looked at, never tuned on one):
* **Two sources of spread.** A reported number is a mean over S training seeds of a metric on one test set.
  Re-running would change it twice over: other seeds (spread across seeds, seen directly on the test set)
  and another test sample (seen by resampling the test images). With per-seed values x_s:
      Var(mean) = s2 / S + c
  s2 = sample variance of x_s across seeds; c = covariance between two seeds' values under a stratified
  bootstrap of the test images (`N_BOOT` resamples, fixed seed `BOOT_SEED`, class counts kept): the part
  of the test-set luck that every seed shares, which more seeds do not average away. (Resampling seeds
  *and* images in one bootstrap counts the seed-by-image part twice: measured type-I error 0.3-0.7% at a
  nominal 5% with 3 seeds; see McCullagh 2000 on crossed designs.)
* **Intervals.** `ci95` = mean ± t(0.975, df) * sqrt(s2 / S + c), df by Welch-Satterthwaite (s2 has S - 1
  degrees of freedom, c is treated as known); with one model (S = 1, e.g. represent) the 2.5-97.5
  percentile interval of the stratified image bootstrap.
* **Comparisons** (arm vs baseline, method vs PCA) are paired: the same seeds (same initialisation and
  batches) and the same resampled images on both sides, applied to the per-seed differences a_s - b_s.
  `diff` = mean over seeds (= difference of the reported means), `ci95` as above, `p_value` = two-sided t
  (S = 1: the bootstrap p-value, twice the smaller share of resampled differences on either side of 0,
  +1 corrected). For AUC, DeLong's test on the seed-averaged probabilities is reported beside it
  (`delong_p_value`: test-image sampling only, for the ensemble of the seeds).
* **Decision.** `significant` = Holm-adjusted p < `ALPHA` (0.05), Holm (1979) over the family of
  comparisons in one metrics file (augment: every arm x metric; represent: every method x metric), so the
  chance of calling any true null "significant" in a file stays <= 5%. `ci95` is the unadjusted interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ALPHA = 0.05
N_BOOT = 2000
BOOT_SEED = 20250610  # fixed once, before any run; every stage uses the same resamples for the same labels
CORRECTION = "holm"
METRICS = ("acc", "auc", "balanced_acc", "f1", "precision", "recall", "minority_recall")

__all__ = [
    "ALPHA",
    "N_BOOT",
    "BOOT_SEED",
    "METRICS",
    "draw",
    "weighted_scores",
    "seeds_and_images",
    "describe",
    "ensemble",
    "compare",
    "holm",
    "decide",
    "delong",
    "rule",
]


def draw(labels: np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """Stratified bootstrap of the test images: (n_boot, N) multiplicities, per-class sums = class counts.

    A function of (labels, n_boot, seed) only, so every model scored on one test set sees the same
    resamples: that is what makes the comparisons paired."""
    labels = np.asarray(labels)
    if n_boot < 1 or labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"bootstrap needs labels (N,) and n_boot >= 1; got {labels.shape}, {n_boot}")
    rng = np.random.default_rng(seed)
    weights = np.zeros((n_boot, len(labels)), dtype=np.int64)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        weights[:, index] = rng.multinomial(len(index), np.full(len(index), 1.0 / len(index)), size=n_boot)
    return weights


# ---------------------------------------------------------------- metrics under resampling weights
def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count 1/2, as sklearn's roc_auc_score) of `scores` (N,) for the boolean
    `positive` (N,), once per row of `weights` (B, N): (B,). O(B * N) through cumulative negative weights."""
    if positive.all() or not positive.any():
        return np.full(len(weights), np.nan)
    pos, neg = scores[positive], scores[~positive]
    w_pos, w_neg = weights[:, positive].astype(float), weights[:, ~positive].astype(float)
    order = np.argsort(neg, kind="stable")
    neg_sorted = neg[order]
    cumulative = np.concatenate([np.zeros((len(weights), 1)), np.cumsum(w_neg[:, order], axis=1)], axis=1)
    lower = np.searchsorted(neg_sorted, pos, side="left")
    upper = np.searchsorted(neg_sorted, pos, side="right")
    below, tied = cumulative[:, lower], cumulative[:, upper] - cumulative[:, lower]
    wins = (w_pos * (below + 0.5 * tied)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def minority_class(labels: np.ndarray) -> int:
    """The class with the fewest test images (ties: the smaller label)."""
    values, counts = np.unique(labels, return_counts=True)
    return int(values[np.argmin(counts)])


def weighted_scores(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of `METRICS` for labels (N,), probabilities (N, C) and resample weights (B, N): (B,) each.

    With one row of ones it equals medgen.metrics.classification_metrics (binary: precision/recall/F1 of
    class 1; more classes: macro averages, one-vs-rest macro AUC), plus `minority_recall`, the recall of
    the class with the fewest test images.
    """
    labels, probs, weights = np.asarray(labels), np.asarray(probs, dtype=float), np.atleast_2d(weights)
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    w = weights.astype(float)
    tp = np.stack([w @ ((pred == c) & (labels == c)).astype(float) for c in range(n_classes)], axis=1)  # (B, C)
    support = np.stack([w @ (labels == c).astype(float) for c in range(n_classes)], axis=1)
    predicted = np.stack([w @ (pred == c).astype(float) for c in range(n_classes)], axis=1)
    recall, precision = _ratio(tp, support), _ratio(tp, predicted)
    f1 = _ratio(2 * tp, support + predicted)
    present = np.unique(labels)
    out = {
        "acc": tp.sum(axis=1) / w.sum(axis=1),
        "balanced_acc": recall[:, present].mean(axis=1),
        "minority_recall": recall[:, minority_class(labels)],
    }
    if n_classes == 2:
        out.update(
            precision=precision[:, 1],
            recall=recall[:, 1],
            f1=f1[:, 1],
            auc=_weighted_auc(probs[:, 1], labels == 1, weights),
        )
    else:
        out.update(
            precision=precision.mean(axis=1),
            recall=recall.mean(axis=1),
            f1=f1.mean(axis=1),
            auc=np.mean([_weighted_auc(probs[:, c], labels == c, weights) for c in range(n_classes)], axis=0),
        )
    return out


def _per_seed(labels: np.ndarray, probs_by_seed: Sequence[np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """{metric: (B, S)} metric of every seed's probabilities under every resample."""
    scored = [weighted_scores(labels, p, weights) for p in probs_by_seed]
    return {m: np.stack([s[m] for s in scored], axis=1) for m in scored[0]}


def _percentile(values: np.ndarray) -> list[float]:
    if not np.isfinite(values).all():
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return [float(lo), float(hi)]


def _bootstrap_p(boot: np.ndarray) -> float:
    """Two-sided: 2 x the smaller share of resampled values at or beyond 0 on either side, +1 corrected."""
    if not np.isfinite(boot).all():
        return float("nan")
    below, above = (np.sum(boot <= 0) + 1) / (len(boot) + 1), (np.sum(boot >= 0) + 1) / (len(boot) + 1)
    return float(min(1.0, 2 * min(below, above)))


def seeds_and_images(values: np.ndarray, boot: np.ndarray) -> dict[str, Any]:
    """The rule's estimate of a mean over seeds: values (S,) per seed on the whole test set, boot (B, S) the
    same under the image resamples. Returns mean, std (across seeds), se, df, ci95 and p (mean vs 0)."""
    from scipy import stats as st

    values, boot = np.asarray(values, dtype=float), np.asarray(boot, dtype=float)
    n_seeds, mean = len(values), float(np.mean(values))
    std = float(np.std(values, ddof=1)) if n_seeds > 1 else 0.0
    if not (np.isfinite(values).all() and np.isfinite(boot).all()):
        nan = float("nan")
        return {"mean": mean, "std": std, "se": nan, "df": nan, "ci95": [nan, nan], "p": nan}
    if n_seeds == 1:
        se = float(np.std(boot[:, 0], ddof=1))
        return {
            "mean": mean,
            "std": 0.0,
            "se": se,
            "df": float("inf"),
            "ci95": _percentile(boot[:, 0]),
            "p": _bootstrap_p(boot[:, 0]),
        }
    covariance = np.cov(boot, rowvar=False)
    shared = max(float(covariance[~np.eye(n_seeds, dtype=bool)].mean()), 0.0)  # c: test luck all seeds share
    across = std**2 / n_seeds
    se = float(np.sqrt(across + shared))
    df = float("inf") if across == 0 else (across + shared) ** 2 / (across**2 / (n_seeds - 1))
    if se == 0:
        return {"mean": mean, "std": std, "se": 0.0, "df": df, "ci95": [mean, mean], "p": 1.0 if mean == 0 else 0.0}
    half = float(st.t.ppf(1 - ALPHA / 2, df)) * se
    return {
        "mean": mean,
        "std": std,
        "se": se,
        "df": df,
        "ci95": [mean - half, mean + half],
        "p": float(2 * st.t.sf(abs(mean) / se, df)),
    }


def _check(labels: np.ndarray, probs_by_seed: Sequence[np.ndarray], weights: np.ndarray) -> None:
    shapes = {np.shape(p) for p in probs_by_seed}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != len(labels):
        raise ValueError(f"per-seed probabilities must all be (N={len(labels)}, C), got {sorted(shapes)}")
    if weights.shape[1] != len(labels):
        raise ValueError(f"resamples were drawn for {weights.shape[1]} test images, not {len(labels)}")


# ---------------------------------------------------------------- what the metrics files report
def describe(
    labels: np.ndarray,
    probs_by_seed: Sequence[np.ndarray],
    metrics: Sequence[str] = METRICS,
    weights: np.ndarray | None = None,
    prefix: str = "test_",
) -> dict[str, Any]:
    """Per metric: `<prefix><m>_mean` and `_std` over seeds (sample std) and `_ci95`, the rule's 95% interval
    of that mean (module docstring). probs_by_seed: one (N, C) array per seed, same test images."""
    labels = np.asarray(labels)
    weights = draw(labels) if weights is None else weights
    _check(labels, probs_by_seed, weights)
    full = _per_seed(labels, probs_by_seed, np.ones((1, len(labels))))
    boot = _per_seed(labels, probs_by_seed, weights)
    out: dict[str, Any] = {}
    for m in metrics:
        found = seeds_and_images(full[m][0], boot[m])
        out[f"{prefix}{m}_mean"], out[f"{prefix}{m}_std"] = found["mean"], found["std"]
        out[f"{prefix}{m}_ci95"] = [float(np.clip(v, 0.0, 1.0)) for v in found["ci95"]]  # metrics live in [0, 1]
    return out


def ensemble(
    labels: np.ndarray,
    probs_by_seed: Sequence[np.ndarray],
    metrics: Sequence[str] = ("acc", "auc", "balanced_acc"),
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of the seed-averaged probabilities (an ensemble of the seeds) with the 2.5-97.5 percentile
    interval of the stratified image bootstrap: `<m>` and `<m>_ci95`."""
    labels = np.asarray(labels)
    weights = draw(labels) if weights is None else weights
    averaged = np.mean(np.stack(probs_by_seed), axis=0)
    full = weighted_scores(labels, averaged, np.ones((1, len(labels))))
    boot = weighted_scores(labels, averaged, weights)
    return {k: v for m in metrics for k, v in ((m, float(full[m][0])), (f"{m}_ci95", _percentile(boot[m])))}


def compare(
    labels: np.ndarray,
    probs_a: Sequence[np.ndarray],
    probs_b: Sequence[np.ndarray],
    metric: str,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired comparison a - b of one metric over the same seeds and test images (module docstring):
    {"diff", "ci95", "p_value"} plus "delong_p_value" for a binary AUC."""
    labels = np.asarray(labels)
    if len(probs_a) != len(probs_b):
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {len(probs_a)} and {len(probs_b)}")
    weights = draw(labels) if weights is None else weights
    _check(labels, probs_a, weights)
    _check(labels, probs_b, weights)
    ones = np.ones((1, len(labels)))
    full = _per_seed(labels, probs_a, ones)[metric][0] - _per_seed(labels, probs_b, ones)[metric][0]
    boot = _per_seed(labels, probs_a, weights)[metric] - _per_seed(labels, probs_b, weights)[metric]
    found = seeds_and_images(full, boot)
    out = {"diff": found["mean"], "ci95": found["ci95"], "p_value": found["p"]}
    if metric == "auc" and np.shape(probs_a[0])[1] == 2:
        mean_a, mean_b = np.mean(np.stack(probs_a), axis=0), np.mean(np.stack(probs_b), axis=0)
        out["delong_p_value"] = delong(labels, mean_a[:, 1], mean_b[:, 1])["p_value"]
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given; NaN stays NaN and does not count)."""
    p = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(len(p), np.nan)
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def decide(family: Mapping[str, Mapping[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Apply the rule to a family {name: {metric: comparison}}: adds `p_holm` and `significant`."""
    keys = [(name, metric) for name, by_metric in family.items() for metric in by_metric]
    adjusted = holm([family[n][m]["p_value"] for n, m in keys])
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in family}
    for (name, metric), p in zip(keys, adjusted):
        out[name][metric] = {**family[name][metric], "p_holm": p, "significant": bool(np.isfinite(p) and p < ALPHA)}
    return out


def rule(family_size: int) -> dict[str, Any]:
    """The decision rule as recorded in a metrics file beside the comparisons it decided."""
    return {
        "alpha": ALPHA,
        "correction": CORRECTION,
        "comparisons": family_size,
        "n_boot": N_BOOT,
        "bootstrap_seed": BOOT_SEED,
        "variance": "seeds (s2/S) + test images (stratified bootstrap), paired",
    }


# ---------------------------------------------------------------- DeLong
def delong(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray | None = None) -> dict[str, float]:
    """DeLong et al. (1988) variance of one AUC, or of the difference of two AUCs on the same images, through
    midranks (Sun & Xu, 2014). labels (N,) binary with class 1 positive; scores (N,).

    Returns auc_a (and auc_b, diff), se, z and the two-sided normal p-value of auc_a - auc_b (or of
    auc_a - 0.5 with one score).
    """
    from scipy import stats as st

    labels = np.asarray(labels)
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 images of each class, got {m} positive and {n} negative")
    columns = [np.asarray(s, dtype=float) for s in (scores_a, scores_b) if s is not None]
    aucs, v10, v01 = [], [], []
    for s in columns:
        pos, neg = s[positive], s[~positive]
        ranks_all = st.rankdata(np.concatenate([pos, neg]))
        ranks_pos, ranks_neg = st.rankdata(pos), st.rankdata(neg)
        aucs.append((ranks_all[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((ranks_all[:m] - ranks_pos) / n)  # per positive: share of negatives it outranks
        v01.append(1.0 - (ranks_all[m:] - ranks_neg) / m)  # per negative: share of positives above it
    s10, s01 = np.atleast_2d(np.cov(np.stack(v10))), np.atleast_2d(np.cov(np.stack(v01)))
    covariance = s10 / m + s01 / n
    contrast = np.array([1.0, -1.0]) if len(columns) == 2 else np.array([1.0])
    variance = float(contrast @ covariance @ contrast)
    effect = aucs[0] - aucs[1] if len(columns) == 2 else aucs[0] - 0.5
    se = float(np.sqrt(max(variance, 0.0)))
    z = effect / se if se > 0 else (0.0 if effect == 0 else np.copysign(np.inf, effect))
    out = {"auc_a": float(aucs[0]), "se": se, "z": float(z), "p_value": float(2 * st.norm.sf(abs(z)))}
    if len(columns) == 2:
        out.update(auc_b=float(aucs[1]), diff=float(effect))
    return out
