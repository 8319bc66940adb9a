"""augment: config validation, arm splits and the summary's paired statistics on hand-made results."""

import numpy as np
import pytest

from medgen.arms import arm_split, summarize
from medgen.data import Split
from medgen.errors import ConfigError
from medgen.params import build_config


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.arms=[baseline, mixup]", "unknown arm"),
        ("augment.arms=[classic, synthetic]", "must start with baseline"),
        ("augment.arms=[baseline, classic]", "at least one synthetic arm"),
        ("augment.seeds=1", "augment.seeds"),
        ("augment.ratio=0", "augment.ratio"),
    ],
)
def test_bad_augment_config_is_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides=[override])


def test_arm_split_adds_synthetic_only_to_synthetic_arms():
    real = Split(np.zeros((6, 28, 28), np.uint8), np.array([0, 1, 1, 1, 1, 1]))
    synthetic = Split(np.full((10, 28, 28), 7, np.uint8), np.array([0] * 5 + [1] * 5))
    assert arm_split("classic", real, synthetic, 1.0, seed=0) is real
    mixed = arm_split("classic+synthetic", real, synthetic, 1.0, seed=0)
    assert np.bincount(mixed.labels).tolist() == [5, 5]
    assert np.array_equal(mixed.images[:6], real.images)  # every real image kept, first
    assert (mixed.images[6:] == 7).all()


LABELS = np.repeat([0, 1], [12, 28])


def _probs(strength, seed):
    """Hand-made test probabilities: every image leans to its true class by `strength` plus seed noise."""
    rng = np.random.default_rng(seed)
    p1 = np.clip(0.5 + (strength + rng.normal(0, 0.05, len(LABELS))) * (2 * LABELS - 1), 0.01, 0.99)
    return np.stack([1 - p1, p1], axis=1)


def _result(arm, seed, strength, val_auc, noise=0):
    from medgen.metrics import classification_metrics

    probs = _probs(strength, seed + noise)
    return {
        "arm": arm,
        "seed": seed,
        "n_train": 10,
        "val": {"auc": val_auc},
        "test": classification_metrics(LABELS, probs),
        "probs": probs,
    }


def test_summary_pairs_by_seed_applies_the_rule_and_picks_best_arm_on_validation():
    results = [_result("baseline", s, 0.02, 0.90) for s in range(3)]
    # synthetic: much better on every test image and seed, but lower on validation
    results += [_result("synthetic", s, 0.3, 0.85) for s in (2, 0, 1)]
    results += [_result("classic", s, 0.02, 0.80, noise=100) for s in range(3)]  # the baseline's skill: no difference
    summary = summarize(results, ("baseline", "classic", "synthetic"), LABELS)
    assert summary["seeds"] == 3
    synthetic = summary["arms"]["synthetic"]
    assert synthetic["test_balanced_acc_mean"] == pytest.approx(1.0)
    lo, hi = summary["arms"]["baseline"]["test_auc_ci95"]
    assert lo <= summary["arms"]["baseline"]["test_auc_mean"] <= hi
    gain = summary["vs_baseline"]["synthetic"]["test_auc"]
    assert gain["diff"] > 0.15 and gain["ci95"][0] > 0 and gain["significant"] is True
    assert set(gain) >= {"diff", "ci95", "p_value", "p_holm", "significant", "delong_p_value"}
    # 3 seeds: a large balanced-accuracy gain can still miss the Holm-adjusted bar (t with few degrees of freedom)
    bal = summary["vs_baseline"]["synthetic"]["test_balanced_acc"]
    assert bal["ci95"][0] > 0 and bal["p_holm"] == pytest.approx(min(1.0, bal["p_value"] * 5))
    same = summary["vs_baseline"]["classic"]["test_auc"]
    assert same["significant"] is False and same["ci95"][0] < 0 < same["ci95"][1]
    assert summary["rule"]["comparisons"] == 6 and summary["rule"]["correction"] == "holm"
    assert summary["synthetic_beats_baseline"] is True
    assert summary["best_arm"] == "baseline"  # chosen on validation AUC, not test


def test_summary_refuses_arms_on_different_seeds():
    results = [_result("baseline", s, 0.1, 0.9) for s in range(2)] + [_result("synthetic", s, 0.1, 0.9) for s in (0, 5)]
    with pytest.raises(ValueError, match="same seeds"):
        summarize(results, ("baseline", "synthetic"), LABELS)
