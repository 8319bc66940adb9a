"""Calibration measures and calibrators, the OOD sets, and the guarded ensemble in torch and ONNX (issue #18)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen import calibration, guard, onnx_export, ood_sets
from medgen.models.classifier import EnsembleClassifier, GuardedOutputs

MEMBER = {"n_classes": 2, "stem": "standard"}


def test_ece_brier_nll_on_a_hand_worked_example():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    # bins (15 wide): 0.9 -> bin 13 (acc 1), 0.8 -> bin 11 (acc 0), 0.7 -> bin 10 (acc 1), 0.6 -> bin 8 (acc 1)
    expected_ece = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6)) / 4
    out = calibration.scores(labels, probs)
    assert out["ece"] == pytest.approx(expected_ece)
    assert out["brier"] == pytest.approx(np.mean([0.02, 1.28, 0.18, 0.32]))
    assert out["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.6])))
    for name in ("ece", "brier", "nll"):
        lo, hi = out[f"{name}_ci95"]
        assert lo <= hi
    bins = calibration.reliability(labels, probs)
    assert [b["n"] for b in bins] == [1, 1, 1, 1] and bins[-1]["accuracy"] == 1.0


def _overconfident(n: int, seed: int, shift: float = 0.0):
    """Labels drawn from softened probabilities, log-probabilities 3x too sharp (plus a class shift)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 2))
    true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random(n) < true[:, 1]).astype(int)
    sharp = 3 * logits + np.array([0.0, shift])
    return sharp - np.log(np.exp(sharp).sum(1, keepdims=True)), labels


def _calibrated(n: int, seed: int, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (n, k) and labels drawn from them: calibrated by construction."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(k, 0.7), size=n)
    labels = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    return probs, labels


def test_the_ece_of_calibrated_probabilities_is_not_zero_on_a_small_set_and_its_p_value_is_uniform():
    probs, labels = _calibrated(156, 0)
    small = calibration.consistency(probs, 0.0)
    large = calibration.consistency(_calibrated(5000, 0)[0], 0.0)
    assert small["ece_if_calibrated"] > 0.03 and small["ece_calibration_p"] == 1.0  # an ECE of 0 is never reached
    assert large["ece_if_calibrated"] < small["ece_if_calibrated"] / 3  # the floor shrinks ~ 1/sqrt(N)
    lo, hi = small["ece_if_calibrated_ci95"]
    assert lo < small["ece_if_calibrated"] < hi
    # 300 calibrated test sets: p < 0.05 about 5% of the time (binomial 95% range 2-8%), and the same call repeats
    p_values = []
    for seed in range(300):
        probs, labels = _calibrated(156, 1000 + seed)
        p_values.append(
            calibration.consistency(probs, calibration.scores(labels, probs)["ece"], draws=400)["ece_calibration_p"]
        )
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.09
    assert calibration.consistency(probs, 0.05, draws=400) == calibration.consistency(probs, 0.05, draws=400)


def test_over_confident_probabilities_get_a_small_consistency_p_value_in_any_number_of_classes():
    for k in (2, 10):
        probs, labels = _calibrated(400, 7, k)
        sharp = np.exp(4 * np.log(probs))  # the same ranking, pushed toward 0/1
        sharp /= sharp.sum(axis=1, keepdims=True)
        observed = calibration.scores(labels, sharp)["ece"]
        assert calibration.consistency(sharp, observed)["ece_calibration_p"] < 0.01
        assert calibration.consistency(probs, calibration.scores(labels, probs)["ece"])["ece_calibration_p"] > 0.01
    with pytest.raises(ValueError, match="N, K"):
        calibration.consistency(np.zeros(5), 0.1)


def test_temperature_is_chosen_and_recovered_for_an_overconfident_model():
    log_probs, labels = _overconfident(2000, 0)
    chosen = calibration.choose(log_probs, labels)
    assert chosen["kind"] in ("temperature", "bias") and 2.5 < chosen["temperature"] < 3.6
    assert chosen["cv_nll"]["none"] > chosen["cv_nll"]["temperature"]
    before = calibration.scores(labels, calibration.apply(log_probs, {"kind": "none"}))["ece"]
    after = calibration.scores(labels, calibration.apply(log_probs, chosen))["ece"]
    assert after < before / 2
    temp = calibration.choose(log_probs, labels, ("temperature",))
    assert np.array_equal(calibration.apply(log_probs, temp).argmax(1), log_probs.argmax(1))  # argmax kept
    assert calibration.choose(log_probs, labels) == chosen  # deterministic


def test_a_shifted_base_rate_chooses_the_bias_calibrator():
    log_probs, labels = _overconfident(2000, 1, shift=4.0)
    chosen = calibration.choose(log_probs, labels)
    assert chosen["kind"] == "bias" and chosen["bias"][1] < -0.5 and abs(sum(chosen["bias"])) < 1e-9


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_ood_sets_have_the_data_layout_and_disjoint_halves(shape):
    channels, side = shape[0], shape[1]
    halves = [ood_sets.far(shape, part) for part in ood_sets.PARTS]
    for sets in halves:
        assert set(sets) == set(ood_sets.FAR)
        for images in sets.values():
            assert images.dtype == np.uint8 and images.shape[1:3] == (side, side)
            assert images.ndim == (3 if channels == 1 else 4)
    for name in ood_sets.FAR:
        first = {a.tobytes() for a in halves[0][name]}
        assert not first & {a.tobytes() for a in halves[1][name]}, name
    assert np.array_equal(ood_sets.far(shape, "report")["noise"], halves[1]["noise"])  # deterministic
    base = np.random.default_rng(0).integers(0, 256, (4, side, side) + ((channels,) if channels > 1 else ()))
    corrupted = ood_sets.corruptions(base.astype(np.uint8))
    assert set(corrupted) == set(ood_sets.CORRUPTIONS)
    assert np.array_equal(corrupted["inverted"], 255 - base) and corrupted["blur"].std() < base.std() / 2


def test_capped_sets_keep_evenly_spaced_images_and_zero_keeps_all():
    images = np.arange(100, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    kept = ood_sets.spaced(images, 5)[:, 0, 0]
    assert kept.tolist() == [0, 25, 50, 74, 99]  # first and last kept, even steps (rounded)
    assert ood_sets.spaced(images, 0) is images and ood_sets.spaced(images, 100) is images
    capped = ood_sets.capped(ood_sets.far((1, 28, 28), "selection"), 64)
    assert {len(v) for k, v in capped.items() if k != "constant"} == {64} and len(capped["constant"]) == 16


def _guarded(score: str, calibration_kind: str = "temperature") -> EnsembleClassifier:
    torch.manual_seed(0)
    spec = {"score": score, "level": 1, "dim": 128} if score == "mahalanobis" else {"score": score}
    model = EnsembleClassifier("ResNetClassifier", MEMBER, 2, ("identity", "hflip"), calibration_kind, spec)
    if calibration_kind != "none":
        model.cal_temperature.fill_(1.7)
        model.cal_bias.copy_(torch.tensor([0.3, -0.3]))
    if score == "mahalanobis":
        rng = np.random.default_rng(0)
        model.guard_means.copy_(torch.from_numpy(rng.normal(0, 0.1, (2, 2, 128))))
        a = rng.normal(0, 1, (2, 128, 128))
        model.guard_precision.copy_(torch.from_numpy(a @ a.transpose(0, 2, 1) / 128 + np.eye(128)))
    return model.eval()


def test_the_guarded_graph_scores_what_the_fitting_code_measures():
    model = _guarded("mahalanobis")
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    probs, score = guard.predict(model, images, "cpu")
    outs = [guard.member_outputs(model, m, images, "cpu") for m in range(2)]
    means, precision = model.guard_means.double().numpy(), model.guard_precision.double().numpy()
    expected = np.mean([guard.mahalanobis(o["features"][1], means[m], precision[m]) for m, o in enumerate(outs)], 0)
    assert np.allclose(score, expected, rtol=1e-4)
    raw = np.log(np.mean([np.exp(o["log_probs"]) for o in outs], axis=0))
    fitted = {"kind": "bias", "temperature": 1.7, "bias": [0.3, -0.3]}
    assert np.allclose(probs, calibration.apply(raw, fitted), atol=1e-5)
    assert torch.allclose(model(torch.zeros(2, 1, 28, 28)), model.guarded(torch.zeros(2, 1, 28, 28))[0])


@pytest.mark.parametrize("score", ["mahalanobis", "energy", "msp"])
def test_guarded_onnx_graph_matches_torch_on_both_outputs(score, tmp_path):
    model = _guarded(score)
    wrapped = GuardedOutputs(model)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    path = onnx_export.export_onnx(wrapped, (x,), tmp_path / "g.onnx", ("images",), ("logits", "ood_score"), 17, {})
    sess = onnx_export.session(path)
    batches = [{"images": (torch.rand(n, 1, 28, 28) * 2 - 1).numpy()} for n in (1, 7)]
    diffs = onnx_export.max_abs_diff(sess, wrapped, batches)
    assert diffs["max"] <= 1e-4
    logits, ood = sess.run(None, batches[1])
    assert logits.shape == (7, 2) and ood.shape == (7,) and np.all(np.isfinite(ood))


def test_an_ensemble_without_a_guard_refuses_to_score():
    model = EnsembleClassifier("ResNetClassifier", MEMBER, 1)
    with pytest.raises(ValueError, match="no input guard"):
        model.guarded(torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="calibration"):
        EnsembleClassifier("ResNetClassifier", MEMBER, 1, calibration="platt")


def test_a_tiny_class_gets_fewer_folds_or_no_calibrator():
    log_probs, labels = _overconfident(200, 2)
    few = np.r_[labels[labels == 0][:3], labels[labels == 1]]
    chosen = calibration.choose(np.r_[log_probs[labels == 0][:3], log_probs[labels == 1]], few)  # 3 folds
    assert set(chosen["cv_nll"]) == set(calibration.KINDS)
    one = np.r_[labels[labels == 0][:1], labels[labels == 1]]
    lonely = calibration.choose(np.r_[log_probs[labels == 0][:1], log_probs[labels == 1]], one)
    assert lonely["kind"] == "none" and lonely["cv_nll"] == {} and "not calibrated" in lonely["fitted_on"]
