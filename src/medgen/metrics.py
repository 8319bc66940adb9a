"""Classification metrics, computed from labels and class probabilities (numpy in, plain floats out).

Binary tasks use the positive class's probability (column 1) for AUC and ROC and report precision,
recall and F1 of the positive class; multi-class tasks use one-vs-rest macro AUC and macro averages.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm


def confusion(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; row = true class, column = predicted class."""
    return skm.confusion_matrix(labels, predictions, labels=list(range(n_classes)))


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC: binary on probs[:, 1], else one-vs-rest macro. NaN when a split holds one class only."""
    n_classes = probs.shape[1]
    if len(np.unique(labels)) < 2:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(labels, probs[:, 1]))
    return float(skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))


def roc(labels: np.ndarray, probs: np.ndarray, positive: int = 1) -> dict[str, list[float]]:
    """ROC curve of class `positive` against the rest: {"fpr": [...], "tpr": [...], "threshold": [...]}."""
    fpr, tpr, thresholds = skm.roc_curve(labels == positive, probs[:, positive])
    thresholds = np.minimum(thresholds, 1.0)  # sklearn's first threshold is +inf; JSON cannot hold it
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "threshold": thresholds.tolist()}


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """acc, balanced_acc, precision, recall, f1, auc for labels (N,) and probabilities (N, C)."""
    n_classes = probs.shape[1]
    predictions = probs.argmax(axis=1)
    average = "binary" if n_classes == 2 else "macro"
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predictions, average=average, labels=list(range(n_classes)) if n_classes > 2 else None, zero_division=0
    )
    return {
        "acc": float(skm.accuracy_score(labels, predictions)),
        "balanced_acc": float(skm.balanced_accuracy_score(labels, predictions)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": auc(labels, probs),
    }


def report(labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> dict[str, Any]:
    """sklearn's classification report as a dict (per class precision/recall/f1/support + averages)."""
    return skm.classification_report(
        labels,
        probs.argmax(axis=1),
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )


def report_text(labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> str:
    """scikit-learn's classification report of the argmax predictions, as text."""
    return skm.classification_report(
        labels,
        probs.argmax(axis=1),
        labels=list(range(len(class_names))),
        target_names=list(class_names),
        digits=4,
        zero_division=0,
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1: seeds are a sample of possible runs) of per-seed values; one seed gives std 0."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, D) and b (M, D) (the FID formula).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). Biased for small N: compare values only
    between sample sets of the same sizes.
    """
    import warnings

    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _check_features(a, b)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # fewer samples than dims: singular, handled below
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():  # regularise as pytorch-fid does
            eps = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))
    return max(value, 0.0)


def kid(a: np.ndarray, b: np.ndarray, n_subsets: int = 50, subset_size: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance (Bińkowski et al., 2018): unbiased MMD^2 with the kernel
    (x.y / D + 1)^3, averaged over random subsets. Unbiased, so usable with small sample sets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _check_features(a, b)
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    dim = a.shape[1]
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.mean())
    return float(np.mean(values))


def c2st_accuracy(real: np.ndarray, synthetic: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """Classifier two-sample test: held-out accuracy of a logistic regression telling real (N, D) from
    synthetic (M, D) features, mean over stratified folds. 0.5 = indistinguishable, 1.0 = trivially told
    apart. Classes are balanced by subsampling the larger set so 0.5 is the chance level."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check_features(np.asarray(real), np.asarray(synthetic))
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synthetic))
    if n < folds:
        raise ValueError(f"c2st needs at least {folds} samples per side, got {n}")
    x = np.concatenate(
        [real[rng.choice(len(real), n, replace=False)], synthetic[rng.choice(len(synthetic), n, replace=False)]]
    )
    y = np.repeat([0, 1], n)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, x, y, cv=cv, scoring="accuracy").mean())


def _check_features(a: np.ndarray, b: np.ndarray) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D), got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples per set, got {len(a)} and {len(b)}")


def generation_quality(
    train: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray],
    c2st_synthetic: np.ndarray,
    seed: int = 0,
) -> dict[str, Any]:
    """FD/KID of synthetic vs train-real beside the held-out-real vs train-real yardstick, overall and
    per class, plus C2ST (train-real vs `c2st_synthetic`). Each pair is (features (N, D), labels (N,));
    `synthetic` should have the held-out set's class counts so the two FDs carry the same bias."""
    (ref, ref_y), (held, held_y), (syn, syn_y) = train, heldout, synthetic
    report: dict[str, Any] = {
        "fd_real_vs_synth": frechet_distance(ref, syn),
        "fd_real_vs_real": frechet_distance(ref, held),
        "kid_real_vs_synth": kid(ref, syn, seed=seed),
        "kid_real_vs_real": kid(ref, held, seed=seed),
        "c2st_acc": c2st_accuracy(ref, c2st_synthetic, seed=seed),
        "per_class": {},
    }
    for label in np.unique(ref_y):
        r, h, s = ref[ref_y == label], held[held_y == label], syn[syn_y == label]
        if min(len(h), len(s)) < 2:
            continue
        report["per_class"][str(int(label))] = {
            "fd_real_vs_synth": frechet_distance(r, s),
            "fd_real_vs_real": frechet_distance(r, h),
            "kid_real_vs_synth": kid(r, s, seed=seed),
            "kid_real_vs_real": kid(r, h, seed=seed),
        }
    report["fd_ratio"] = report["fd_real_vs_synth"] / max(report["fd_real_vs_real"], 1e-12)
    return report


# --- generation: ratios to the real-vs-real yardstick, fidelity/diversity, memorisation -----------------


def kid_stats(
    a: np.ndarray, b: np.ndarray, n_subsets: int = 50, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID as `kid` (same subsets for the same seed) plus the standard error of its mean over subsets."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    _check_features(a, b)
    rng = np.random.default_rng(seed)
    m, dim = min(subset_size, len(a), len(b)), a.shape[1]
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / dim + 1) ** 3, ((y @ y.T) / dim + 1) ** 3, ((x @ y.T) / dim + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(n_subsets))


def ratio_to_real(synthetic: float, real: float, floor: float = 1e-12) -> float:
    """synthetic / max(real, floor): how many times the real-vs-real yardstick a synthetic distance is.

    An unbiased estimate (KID) of a near-zero distance can be <= 0; the floor (for KID: the yardstick's
    standard error) keeps the ratio finite and says "indistinguishable from real at this sample size"."""
    return float(synthetic / max(real, floor))


def _nn_distances(queries: np.ndarray, reference: np.ndarray, k: int = 1, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each query (N, D) to its k-th nearest reference row (M, D) -> (N,)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k + int(exclude_self)).fit(reference)
    distances, _ = index.kneighbors(queries)
    return distances[:, -1]


def precision_recall(real: np.ndarray, synthetic: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al., 2019) and density/coverage (Naeem et al., 2020).

    Each real sample (N, D) gets a ball of radius = distance to its k-th nearest real neighbour (k=3
    for P/R in the 2019 paper, Naeem et al. use 5; one k here so the four share one manifold).
    precision: share of synthetic samples inside some real ball (fidelity); recall: share of real samples
    inside some ball of the synthetic set (diversity); density: mean number of real balls a synthetic
    sample falls in, / k (~1 for matching distributions, robust to real outliers); coverage: share of real
    balls that hold at least one synthetic sample."""
    from sklearn.metrics import pairwise_distances

    real, synthetic = np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    _check_features(real, synthetic)
    if min(len(real), len(synthetic)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    real_radii = _nn_distances(real, real, k, exclude_self=True)  # (N,)
    synth_radii = _nn_distances(synthetic, synthetic, k, exclude_self=True)  # (M,)
    d = pairwise_distances(real, synthetic)  # (N, M)
    inside = d <= real_radii[:, None]  # [i, j]: synthetic j lies in real i's ball
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d <= synth_radii[None, :]).any(axis=1).mean()),
        "density": float(inside.sum(axis=0).mean() / k),
        "coverage": float(inside.any(axis=1).mean()),
    }


def flat_pixels(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W[, C]) -> float64 (N, H*W*C) in [0, 1]: the pixel space of the memorisation check."""
    return np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0


def memorization(
    train: np.ndarray, heldout: np.ndarray, synthetic: np.ndarray, quantile: float = 0.05
) -> dict[str, float]:
    """Share of synthetic samples closer to their nearest training sample than real unseen images are.

    train (N, D), heldout (M, D) and synthetic (S, D) in one space (medgen uses pixels, `flat_pixels`).
    threshold = the `quantile` of the held-out -> train nearest-neighbour distances: only that share of
    real images never trained on comes that close to a training image, so a generator of new images
    scores about `quantile` and a copier scores near 1. Reports the share, the threshold and medians.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    train, heldout, synthetic = (np.asarray(v, dtype=np.float64) for v in (train, heldout, synthetic))
    _check_features(train, synthetic)
    _check_features(train, heldout)
    held_nn, synth_nn = _nn_distances(heldout, train), _nn_distances(synthetic, train)
    threshold = float(np.quantile(held_nn, quantile))
    return {
        "memorization_share": float((synth_nn < threshold).mean()),
        "threshold": threshold,
        "quantile": quantile,
        "heldout_nn_median": float(np.median(held_nn)),
        "synthetic_nn_median": float(np.median(synth_nn)),
    }


def closest_pairs(train: np.ndarray, synthetic: np.ndarray, n: int = 16) -> list[tuple[int, int, float]]:
    """The `n` synthetic samples nearest to a training sample: [(synthetic index, train index, distance)],
    closest first. train (N, D), synthetic (S, D) in one space; each synthetic index appears once."""
    from sklearn.neighbors import NearestNeighbors

    train, synthetic = np.asarray(train, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    _check_features(train, synthetic)
    distances, index = NearestNeighbors(n_neighbors=1).fit(train).kneighbors(synthetic)
    order = np.argsort(distances[:, 0], kind="stable")[:n]
    return [(int(s), int(index[s, 0]), float(distances[s, 0])) for s in order]


def generation_report(
    train: tuple[np.ndarray, np.ndarray],
    heldout: tuple[np.ndarray, np.ndarray],
    synthetic: tuple[np.ndarray, np.ndarray],
    c2st_synthetic: tuple[np.ndarray, np.ndarray],
    pixels: tuple[np.ndarray, np.ndarray, np.ndarray],
    seed: int = 0,
    memorization_quantile: float = 0.05,
) -> dict[str, Any]:
    """`generation_quality` plus, overall and per class: KID ratio, C2ST, precision/recall/density/coverage
    (features of `synthetic` vs train) and the memorisation share (pixel space).

    train/heldout/synthetic/c2st_synthetic: (features (N, D), labels (N,)); `pixels` = uint8 images of
    (train, heldout, c2st_synthetic), the memorisation check's inputs. Per class every comparison is made
    within the class (a class-0 sample is judged against class-0 training images)."""
    (ref, ref_y), (held, held_y), (syn, syn_y), (c2s, c2s_y) = train, heldout, synthetic, c2st_synthetic
    report = generation_quality(train, heldout, synthetic, c2s, seed=seed)
    px_train, px_held, px_syn = (flat_pixels(p) for p in pixels)
    groups = {
        "all": (
            np.ones(len(ref_y), bool),
            np.ones(len(held_y), bool),
            np.ones(len(syn_y), bool),
            np.ones(len(c2s_y), bool),
        )
    }
    groups |= {str(int(c)): (ref_y == c, held_y == c, syn_y == c, c2s_y == c) for c in np.unique(ref_y)}
    for name, (r, h, s, c) in groups.items():
        target = report if name == "all" else report["per_class"].get(name)
        if target is None:
            continue
        kid_real, kid_se = kid_stats(ref[r], held[h], seed=seed)
        target["kid_ratio"] = ratio_to_real(target["kid_real_vs_synth"], kid_real, floor=kid_se)
        target["fd_ratio"] = ratio_to_real(target["fd_real_vs_synth"], target["fd_real_vs_real"])
        if name != "all":
            target["c2st_acc"] = c2st_accuracy(ref[r], c2s[c], seed=seed)
        target.update(precision_recall(ref[r], syn[s]))
        mem = memorization(px_train[r], px_held[h], px_syn[c], memorization_quantile)
        target["memorization_share"], target["memorization_threshold"] = mem["memorization_share"], mem["threshold"]
    return report
