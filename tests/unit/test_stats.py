import math

import pytest

from medgen.stats import mean_std, paired_comparison


def test_mean_std_uses_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_paired_comparison_detects_a_consistent_gain():
    baseline = [0.70, 0.72, 0.71, 0.69]
    arm = [b + 0.05 + 0.001 * i for i, b in enumerate(baseline)]
    result = paired_comparison(arm, baseline)
    assert result["diff_mean"] == pytest.approx(0.0515)
    assert result["beats"] is True  # 0.0515 > baseline std 0.0129
    assert result["p_value"] < 0.001


def test_paired_comparison_does_not_call_noise_a_win():
    baseline = [0.70, 0.80, 0.60]
    arm = [0.72, 0.78, 0.63]
    result = paired_comparison(arm, baseline)
    assert result["beats"] is False  # +0.01 against a baseline std of 0.1
    assert result["p_value"] > 0.3


def test_identical_differences_give_nan_p_not_a_crash():
    result = paired_comparison([0.5, 0.6], [0.4, 0.5])
    assert math.isnan(result["p_value"]) and result["diff_std"] == 0.0


def test_unpaired_lengths_are_rejected():
    with pytest.raises(ValueError, match="equal-length"):
        paired_comparison([0.1, 0.2, 0.3], [0.1, 0.2])


def test_metric_names_are_made_mlflow_safe():
    from medgen.tracking import numeric_metrics

    flat = numeric_metrics({"arms": {"classic+synthetic": {"n_train": 798, "name": "x"}}, "ok": True})
    assert flat == {"arms.classic_synthetic.n_train": 798.0}
