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
        labels, probs.argmax(axis=1), labels=list(range(len(class_names))), target_names=list(class_names),
        output_dict=True, zero_division=0,
    )


def report_text(labels: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> str:
    return skm.classification_report(
        labels, probs.argmax(axis=1), labels=list(range(len(class_names))), target_names=list(class_names),
        digits=4, zero_division=0,
    )


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population std (ddof=0) of per-seed values; one seed gives std 0."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std())
