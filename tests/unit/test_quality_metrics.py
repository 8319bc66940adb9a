"""Generation-quality metrics on hand-made cases, and the ordering real < blurred < noise on BreastMNIST."""

import numpy as np
import pytest
import torch

from medgen import metrics
from medgen.config import DataConfig, GenerateConfig
from medgen.data import load_npz, to_tensors
from medgen.gan_training import extract_features, fit_feature_net


def test_frechet_distance_of_gaussians_matches_the_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 3))
    b = rng.normal(size=(20000, 3)) * 2 + np.array([1.0, 0.0, 0.0])
    # ||mu||^2 + tr(I + 4I - 2 * 2I) = 1 + 3
    assert metrics.frechet_distance(a, b) == pytest.approx(4.0, rel=0.05)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    assert abs(metrics.kid(a, b)) < 0.05
    assert metrics.kid(a, b + 1.0) > 10 * abs(metrics.kid(a, b))


def test_c2st_is_chance_for_one_distribution_and_high_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(300, 8))
    assert 0.4 < metrics.c2st_accuracy(a, b) < 0.6
    assert metrics.c2st_accuracy(a, b + 1.5) > 0.9


def test_metrics_reject_mismatched_features():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        metrics.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def _blur(x: torch.Tensor) -> torch.Tensor:
    kernel = torch.ones(1, 1, 5, 5) / 25
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate"), kernel)


def test_metrics_rank_real_below_blurred_below_noise(breastmnist_npz):
    """Held-out real images are closer to train than blurred ones, which are closer than noisy ones."""
    torch.manual_seed(0)
    dataset = load_npz(breastmnist_npz, DataConfig())
    x_train, y_train = to_tensors(dataset.train)
    x_held, _ = to_tensors(dataset.test)
    net = fit_feature_net(x_train, y_train, 2, GenerateConfig(feature_epochs=3), torch.device("cpu"))
    ref = extract_features(net, x_train)
    noisy = (x_held + 0.5 * torch.randn_like(x_held)).clamp(-1, 1)
    candidates = {"real": x_held, "blurred": _blur(x_held), "noise": noisy}
    feats = {name: extract_features(net, x) for name, x in candidates.items()}
    fd = {name: metrics.frechet_distance(ref, f) for name, f in feats.items()}
    kid = {name: metrics.kid(ref, f) for name, f in feats.items()}
    c2st = {name: metrics.c2st_accuracy(ref, f) for name, f in feats.items()}
    assert fd["real"] < fd["blurred"] < fd["noise"], fd
    assert kid["real"] < kid["blurred"] < kid["noise"], kid
    assert c2st["real"] < c2st["blurred"] <= c2st["noise"], c2st
    assert c2st["real"] < 0.7
