"""Ratios to real-vs-real, precision/recall/density/coverage, memorisation and closest pairs on hand-made cases."""

import numpy as np
import pytest

from medgen import metrics, plots


def _blobs(rng, n, centres, dim=4, spread=0.3):
    centres = np.asarray(centres, dtype=float)
    pick = rng.integers(0, len(centres), n)
    return centres[pick] + rng.normal(scale=spread, size=(n, dim))


def test_precision_recall_for_one_distribution_a_far_one_and_a_collapsed_one():
    rng = np.random.default_rng(0)
    modes = [[0, 0, 0, 0], [5, 5, 5, 5]]
    real = _blobs(rng, 400, modes)
    same = metrics.precision_recall(real, _blobs(rng, 400, modes))
    assert same["precision"] > 0.85 and same["recall"] > 0.85 and same["coverage"] > 0.85
    assert 0.7 < same["density"] < 1.3
    far = metrics.precision_recall(real, _blobs(rng, 400, [[20, 20, 20, 20]]))
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    collapsed = metrics.precision_recall(real, _blobs(rng, 400, modes[:1]))  # one of two modes: faithful, not diverse
    assert collapsed["precision"] > 0.85
    assert 0.35 < collapsed["recall"] < 0.65 and 0.35 < collapsed["coverage"] < 0.65


def test_precision_recall_needs_more_samples_than_k():
    with pytest.raises(ValueError, match="k=3"):
        metrics.precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_memorization_is_one_for_copies_and_about_the_quantile_for_new_draws():
    rng = np.random.default_rng(0)
    train, heldout, fresh = rng.random((300, 16)), rng.random((300, 16)), rng.random((1000, 16))
    copies = train[rng.integers(0, 300, 200)] + rng.normal(scale=1e-3, size=(200, 16))
    assert metrics.memorization(train, heldout, copies)["memorization_share"] == 1.0
    new = metrics.memorization(train, heldout, fresh, quantile=0.05)
    assert 0.01 < new["memorization_share"] < 0.12  # same distribution as held-out: ~ the quantile
    held_nn = np.sort(np.linalg.norm(heldout[:, None] - train[None], axis=2).min(axis=1))
    assert new["threshold"] == pytest.approx(np.quantile(held_nn, 0.05))
    half = np.concatenate([copies[:100], fresh[:100]])
    assert 0.45 < metrics.memorization(train, heldout, half)["memorization_share"] < 0.6
    with pytest.raises(ValueError, match="quantile"):
        metrics.memorization(train, heldout, fresh, quantile=0.0)


def test_closest_pairs_finds_the_planted_copy_first():
    rng = np.random.default_rng(1)
    train, synthetic = rng.random((50, 8)), rng.random((30, 8))
    synthetic[17] = train[42]
    pairs = metrics.closest_pairs(train, synthetic, n=5)
    assert pairs[0] == (17, 42, 0.0)
    assert len(pairs) == 5 and [d for _, _, d in pairs] == sorted(d for _, _, d in pairs)
    assert len({s for s, _, _ in pairs}) == 5


def test_kid_stats_match_kid_and_ratio_uses_the_floor():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 0.5
    mean, se = metrics.kid_stats(a, b, seed=3)
    assert mean == pytest.approx(metrics.kid(a, b, seed=3)) and se > 0
    assert metrics.ratio_to_real(2.0, 0.5) == 4.0
    assert metrics.ratio_to_real(2.0, -0.1, floor=0.01) == pytest.approx(200.0)  # yardstick <= 0: the floor


def test_generation_report_per_class_and_a_copying_generator():
    rng = np.random.default_rng(0)
    n, dim = 120, 6
    y = np.repeat([0, 1], n // 2)
    feats = lambda: rng.normal(size=(n, dim)) + y[:, None] * 2.0  # noqa: E731
    pixels = lambda: rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)  # noqa: E731
    train_px = pixels()
    report = metrics.generation_report(
        (feats(), y), (feats(), y), (feats(), y), (feats(), y), (train_px, pixels(), train_px)
    )
    for scope in (report, report["per_class"]["0"], report["per_class"]["1"]):
        assert {
            "fd_ratio",
            "kid_ratio",
            "c2st_acc",
            "precision",
            "recall",
            "density",
            "coverage",
            "memorization_share",
        } <= set(scope)
        assert scope["memorization_share"] == 1.0  # the synthetic pixels are the training images
    assert report["c2st_acc"] < 0.7 and report["per_class"]["0"]["fd_ratio"] < 5


def test_nearest_pairs_montage_puts_each_training_image_under_its_sample():
    synthetic = np.full((3, 4, 4), 10, dtype=np.uint8)
    train = np.full((5, 4, 4), 200, dtype=np.uint8)
    picture = plots.nearest_pairs_montage(synthetic, train, [(0, 4, 0.1), (2, 1, 0.2), (1, 0, 0.3)], columns=2)
    grid = np.asarray(picture)[::3, ::3]  # undo the 3x nearest-neighbour upscale
    assert grid.shape == (4 * 4 + 5 * 2, 2 * 4 + 3 * 2)  # 4 rows of cells (2 pairs of rows), 2 columns
    assert grid[2, 2] == 10 and grid[2 + 6, 2] == 200 and grid[2 + 12, 2] == 10 and grid[2 + 18, 2 + 6] == 255
