"""Classification metrics on hand-made cases whose answers are worked out by hand."""

import numpy as np
import pytest

from medgen import metrics

# 4 negatives, 6 positives; argmax predictions [0,0,1,0 | 1,1,0,1,1,0]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P1 = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.95, 0.35])
PROBS = np.stack([1 - P1, P1], axis=1)


def test_binary_metrics_match_the_hand_computed_confusion():
    assert metrics.confusion(LABELS, PROBS.argmax(1), 2).tolist() == [[3, 1], [2, 4]]
    got = metrics.classification_metrics(LABELS, PROBS)
    assert got["acc"] == pytest.approx(7 / 10)
    assert got["balanced_acc"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert got["precision"] == pytest.approx(4 / 5)
    assert got["recall"] == pytest.approx(4 / 6)
    assert got["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    # AUC = share of (positive, negative) pairs ranked correctly: 22 of 24
    assert got["auc"] == pytest.approx(22 / 24)


def test_roc_curve_runs_from_origin_to_corner_and_report_counts_support():
    curve = metrics.roc(LABELS, PROBS)
    assert (curve["fpr"][0], curve["tpr"][0]) == (0.0, 0.0)
    assert (curve["fpr"][-1], curve["tpr"][-1]) == (1.0, 1.0)
    assert max(curve["threshold"]) <= 1.0  # no +inf (JSON-safe)
    report = metrics.report(LABELS, PROBS, ("neg", "pos"))
    assert report["neg"]["support"] == 4 and report["pos"]["support"] == 6
    assert report["pos"]["recall"] == pytest.approx(4 / 6)
    assert "neg" in metrics.report_text(LABELS, PROBS, ("neg", "pos"))


def test_multiclass_uses_macro_averages_and_perfect_scores_are_one():
    labels = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 2, 1]] * 0.7 + 0.1  # last image predicted 1 instead of 2
    got = metrics.classification_metrics(labels, probs)
    assert got["acc"] == pytest.approx(3 / 4)
    assert got["balanced_acc"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert got["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    perfect = metrics.classification_metrics(labels, np.eye(3)[labels])
    assert perfect["acc"] == perfect["auc"] == perfect["f1"] == 1.0


def test_auc_is_nan_for_a_single_class_and_mean_std_is_sample_std():
    assert np.isnan(metrics.auc(np.zeros(3, dtype=int), np.full((3, 2), 0.5)))
    assert metrics.mean_std([0.8, 0.9, 1.0]) == pytest.approx((0.9, np.std([0.8, 0.9, 1.0], ddof=1)))
    assert metrics.mean_std([0.5]) == (0.5, 0.0)
