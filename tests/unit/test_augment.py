"""augment: config validation, arm splits and the summary's paired statistics on hand-made results."""

import numpy as np
import pytest

from medgen.config import build_config
from medgen.data import Split
from medgen.errors import ConfigError
from medgen.stages.augment import arm_split, summarize


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


def _result(arm, seed, test_auc, val_auc, bal=0.7):
    scores = {"auc": test_auc, "balanced_acc": bal, "acc": 0.8, "f1": 0.8}
    return {"arm": arm, "seed": seed, "n_train": 10, "val": {"auc": val_auc}, "test": scores}


def test_summary_pairs_by_seed_and_picks_best_arm_on_validation():
    results = [_result("baseline", s, 0.80 + 0.01 * s, 0.90) for s in range(3)]
    # synthetic: +0.05 on every seed on test, but lower on validation
    results += [_result("synthetic", s, 0.85 + 0.01 * s, 0.85) for s in (2, 0, 1)]
    summary = summarize(results, ("baseline", "synthetic"))
    assert summary["seeds"] == 3
    assert summary["arms"]["synthetic"]["test_auc_mean"] == pytest.approx(0.86)
    assert summary["arms"]["baseline"]["test_auc_std"] == pytest.approx(0.01)
    delta = summary["delta_vs_baseline"]["synthetic"]["test_auc"]
    assert delta["diff_mean"] == pytest.approx(0.05) and delta["diff_std"] == pytest.approx(0.0, abs=1e-12)
    assert delta["beats"] is True and summary["synthetic_beats_baseline"] is True
    assert summary["best_arm"] == "baseline"  # chosen on validation AUC, not test
