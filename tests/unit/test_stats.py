"""medgen.stats on hand-made cases: weighted metrics = sklearn's, DeLong against a hand-computed value and
against the bootstrap, Holm, the paired rule, and coverage of the intervals on simulated test sets."""

import math

import numpy as np
import pytest
from scipy import stats as st

from medgen import stats
from medgen.metrics import classification_metrics, mean_std


def probs_of(scores):
    p1 = 1 / (1 + np.exp(-scores))
    return np.stack([1 - p1, p1], axis=1)


def binormal(rng, n_neg, n_pos, shift):
    """Scores of a binormal model (negatives N(0,1), positives N(shift,1)) as 2-column probabilities."""
    labels = np.repeat([0, 1], [n_neg, n_pos])
    return labels, probs_of(rng.normal(0.0, 1.0, n_neg + n_pos) + shift * labels)


def test_mean_std_uses_sample_std():
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_unit_weights_reproduce_sklearn_metrics(n_classes):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, n_classes, 97)
    probs = rng.dirichlet(np.ones(n_classes), 97)
    probs[:5] = probs[5]  # ties in the scores
    got = stats.weighted_scores(labels, probs, np.ones((1, 97)))
    want = classification_metrics(labels, probs)
    for key, value in want.items():
        assert got[key][0] == pytest.approx(value, abs=1e-12), key
    minority = np.bincount(labels).argmin()
    assert got["minority_recall"][0] == pytest.approx(np.mean(probs.argmax(1)[labels == minority] == minority))


def test_weights_are_multiplicities():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    weights = np.array([[2, 0, 1, 1, 1]])  # image 0 twice, image 1 dropped
    expanded = [0, 0, 2, 3, 4]
    got = stats.weighted_scores(labels, probs, weights)
    want = classification_metrics(labels[expanded], probs[expanded])
    for key, value in want.items():
        assert got[key][0] == pytest.approx(value), key


def test_resamples_are_stratified_fixed_and_shared():
    labels = np.repeat([0, 1], [42, 114])
    a, b = stats.draw(labels), stats.draw(labels)
    assert a.shape == (stats.N_BOOT, 156) and np.array_equal(a, b)
    assert (a[:, :42].sum(1) == 42).all() and (a[:, 42:].sum(1) == 114).all()
    assert not np.array_equal(stats.draw(labels, seed=1), a)


def test_delong_matches_a_hand_computed_case():
    # positives 0.9 0.8 0.4, negatives 0.7 0.3: AUC 5/6; V10 = [1, 1, 1/2] (var 1/12), V01 = [2/3, 1] (var 1/18)
    labels = np.array([1, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3])
    result = stats.delong(labels, scores)
    assert result["auc_a"] == pytest.approx(5 / 6)
    assert result["se"] == pytest.approx(math.sqrt((1 / 12) / 3 + (1 / 18) / 2))
    assert result["z"] == pytest.approx((5 / 6 - 0.5) / result["se"])


def test_delong_difference_agrees_with_the_paired_bootstrap_on_a_large_sample():
    rng = np.random.default_rng(1)
    labels, probs_a = binormal(rng, 1000, 1000, 1.0)
    noise = rng.normal(0, 0.8, len(labels))  # model b: a noisier copy of a (correlated, lower AUC)
    p1 = 1 / (1 + np.exp(-(np.log(probs_a[:, 1] / probs_a[:, 0]) + noise)))
    probs_b = np.stack([1 - p1, p1], axis=1)
    delong = stats.delong(labels, probs_a[:, 1], probs_b[:, 1])
    weights = stats.draw(labels, n_boot=2000)
    boot = (
        stats.weighted_scores(labels, probs_a, weights)["auc"] - stats.weighted_scores(labels, probs_b, weights)["auc"]
    )
    assert delong["diff"] == pytest.approx(boot.mean(), abs=0.002)
    assert delong["se"] == pytest.approx(boot.std(ddof=1), rel=0.12)  # same standard error
    compared = stats.compare(labels, [probs_a], [probs_b], "auc", weights)
    assert compared["delong_p_value"] == pytest.approx(delong["p_value"])
    assert compared["ci95"][0] > 0 and compared["p_value"] < 0.01 and delong["p_value"] < 0.01


def test_delong_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(2)
    p_values = []
    for _ in range(300):
        labels, probs = binormal(rng, 42, 114, 1.2)
        other = binormal(rng, 42, 114, 1.2)[1]  # same population, independent scores
        p_values.append(stats.delong(labels, probs[:, 1], other[:, 1])["p_value"])
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.09
    assert 0.40 <= np.median(p_values) <= 0.60


def test_intervals_cover_the_true_auc_and_accuracy():
    """95% intervals on simulated BreastMNIST-sized test sets (42 / 114) cover the population value ~95%."""
    rng = np.random.default_rng(3)
    shift = 1.2
    true_auc = st.norm.cdf(shift / math.sqrt(2))
    # accuracy at threshold 0.5 (score 0): negatives right with P(N(0,1) < 0), positives with P(N(shift,1) > 0)
    true_acc = (42 * 0.5 + 114 * st.norm.cdf(shift)) / 156
    hits = {"auc": 0, "acc": 0}
    runs = 200
    for _ in range(runs):
        labels, probs = binormal(rng, 42, 114, shift)
        found = stats.describe(labels, [probs], ("auc", "acc"), stats.draw(labels, n_boot=500))
        hits["auc"] += found["test_auc_ci95"][0] <= true_auc <= found["test_auc_ci95"][1]
        hits["acc"] += found["test_acc_ci95"][0] <= true_acc <= found["test_acc_ci95"][1]
    for key, count in hits.items():
        assert 0.89 <= count / runs <= 0.99, (key, count / runs)


def seeds_of(rng, labels, base, n_seeds, shift, spread):
    """Per-seed probabilities: `base` logits plus a per-seed offset for the positive class."""
    logits = np.log(base[:, 1] / base[:, 0])
    out = []
    for _ in range(n_seeds):
        push = (shift + rng.normal(0, spread)) * (2 * labels - 1)
        p1 = 1 / (1 + np.exp(-(logits + push + rng.normal(0, 0.3, len(labels)))))
        out.append(np.stack([1 - p1, p1], axis=1))
    return out


def test_seed_spread_widens_the_interval_and_the_mean_is_the_reported_one():
    rng = np.random.default_rng(4)
    labels, base = binormal(rng, 42, 114, 1.2)
    per_seed = seeds_of(rng, labels, base, 5, 0.0, 0.6)
    spread = stats.describe(labels, per_seed, ("auc",))
    same = stats.describe(labels, [per_seed[0]] * 5, ("auc",))  # five identical seeds: test sampling only
    aucs = [classification_metrics(labels, p)["auc"] for p in per_seed]
    assert spread["test_auc_mean"] == pytest.approx(np.mean(aucs))
    assert spread["test_auc_std"] == pytest.approx(np.std(aucs, ddof=1))
    width = lambda d: d["test_auc_ci95"][1] - d["test_auc_ci95"][0]  # noqa: E731
    assert width(spread) > width(same) > 0.05  # 156 test images alone leave a wide interval
    assert spread["test_auc_ci95"][0] < spread["test_auc_mean"] < spread["test_auc_ci95"][1]


def test_the_paired_rule_holds_its_size_under_the_null():
    """Arms from the same process (seed-level skill and image-by-seed noise), 3 seeds: p < 0.05 about 5% of
    the time. Resampling seeds and images together gave 0.3-0.7% here: the seed-by-image part counted twice."""
    rng = np.random.default_rng(6)
    rejected, runs = {"auc": 0, "balanced_acc": 0}, 200
    for _ in range(runs):
        labels = np.repeat([0, 1], [42, 114])
        x = rng.normal(0, 1, 156) + 1.2 * labels

        def seed_model():
            return probs_of((1 + rng.normal(0, 0.15)) * x + rng.normal(0, 0.7, len(x)))

        arm, baseline = [seed_model() for _ in range(3)], [seed_model() for _ in range(3)]
        weights = stats.draw(labels, n_boot=400, seed=int(rng.integers(1 << 30)))
        for key in rejected:
            rejected[key] += stats.compare(labels, arm, baseline, key, weights)["p_value"] < 0.05
    for key, count in rejected.items():
        assert 0.015 <= count / runs <= 0.10, (key, count / runs)


def test_paired_comparison_finds_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(5)
    labels, base = binormal(rng, 42, 114, 1.0)
    baseline = seeds_of(rng, labels, base, 3, 0.0, 0.1)
    better = seeds_of(rng, labels, base, 3, 1.0, 0.1)  # every image pushed the right way
    same = seeds_of(rng, labels, base, 3, 0.0, 0.1)
    gain = stats.compare(labels, better, baseline, "balanced_acc")
    assert gain["diff"] > 0.05 and gain["ci95"][0] > 0 and gain["p_value"] < 0.01
    noise = stats.compare(labels, same, baseline, "auc")
    assert noise["ci95"][0] < 0 < noise["ci95"][1] and noise["p_value"] > 0.05
    identical = stats.compare(labels, baseline, baseline, "auc")
    assert identical["diff"] == 0.0 and identical["p_value"] == 1.0 and identical["ci95"] == [0.0, 0.0]


def test_unpaired_seeds_are_rejected():
    labels = np.array([0, 1, 0, 1])
    probs = np.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="same seeds"):
        stats.compare(labels, [probs, probs], [probs], "auc")


def test_holm_adjusts_step_down_and_keeps_order():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = stats.holm([0.2, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_decide_applies_holm_over_the_whole_family():
    family = {"a": {"auc": {"p_value": 0.02}, "acc": {"p_value": 0.04}}, "b": {"auc": {"p_value": 0.001}}}
    decided = stats.decide(family)
    assert decided["b"]["auc"]["significant"] is True  # 0.003 after Holm
    assert decided["a"]["auc"]["p_holm"] == pytest.approx(0.04) and decided["a"]["auc"]["significant"] is True
    assert decided["a"]["acc"]["p_holm"] == pytest.approx(0.04)
    alone = stats.decide({"a": {"acc": {"p_value": 0.04}}})
    assert alone["a"]["acc"]["significant"] is True
    crowded = stats.decide({f"m{i}": {"acc": {"p_value": 0.04}} for i in range(3)})
    assert not any(v["acc"]["significant"] for v in crowded.values())  # 0.12 after Holm: not significant


def test_ensemble_scores_the_seed_averaged_probabilities():
    labels = np.array([0, 0, 1, 1])
    seed_a = np.array([[0.6, 0.4], [0.4, 0.6], [0.4, 0.6], [0.6, 0.4]])
    seed_b = np.array([[0.8, 0.2], [0.8, 0.2], [0.2, 0.8], [0.2, 0.8]])
    found = stats.ensemble(labels, [seed_a, seed_b], weights=stats.draw(labels, n_boot=200))
    assert found["acc"] == 1.0 and found["auc"] == 1.0  # the average is right on every image
    assert found["acc_ci95"] == [1.0, 1.0]


def test_metric_names_are_made_mlflow_safe_and_intervals_flattened():
    from medgen.tracking import numeric_metrics

    flat = numeric_metrics(
        {"arms": {"classic+synthetic": {"n_train": 798, "name": "x"}}, "ok": True, "test_auc_ci95": [0.8, 0.9]}
    )
    assert flat == {"arms.classic_synthetic.n_train": 798.0, "test_auc_ci95.0": 0.8, "test_auc_ci95.1": 0.9}
