"""Rebalancing with synthetic samples, sampling requests, the samples file."""

import numpy as np
import pytest
import torch

from medgen.data import Split
from medgen.errors import ConfigError, DataError, MedgenError
from medgen.models.gan import Generator
from medgen.params import load_config
from medgen.synthetic import load_samples, rebalance, sample, sample_like, save_samples
from tests.conftest import ROOT


def _split(counts: dict[int, int], value: int) -> Split:
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in counts.items()])
    images = np.full((len(labels), 28, 28), value, dtype=np.uint8)
    images[:, 0, 0] = np.arange(len(labels)) % 251  # distinguishable rows
    return Split(images, labels)


def test_rebalance_reaches_equal_counts_and_keeps_every_real_sample():
    train, fake = _split({0: 147, 1: 399}, value=10), _split({0: 2000, 1: 2000}, value=200)
    out = rebalance(train, fake, ratio=1.0, seed=0)
    assert np.bincount(out.labels).tolist() == [399, 399]
    assert np.array_equal(out.images[: len(train)], train.images)  # real ones first, all of them, in order
    assert np.array_equal(out.labels[: len(train)], train.labels)
    added = out.images[len(train) :]
    assert len(added) == 252 and (added[:, 1:, 1:] == 200).all()  # only synthetic images were added
    assert (out.labels[len(train) :] == 0).all()


def test_rebalance_ratio_fills_a_share_of_the_gap_and_is_seeded():
    train, fake = _split({0: 147, 1: 399}, 10), _split({0: 2000, 1: 2000}, 200)
    half = rebalance(train, fake, ratio=0.5, seed=1)
    assert np.bincount(half.labels).tolist() == [147 + 126, 399]
    assert np.array_equal(half.images, rebalance(train, fake, ratio=0.5, seed=1).images)
    assert len(rebalance(train, fake, ratio=0.0, seed=1)) == len(train)


def test_rebalance_leaves_its_inputs_alone_and_rejects_bad_requests():
    train, fake = _split({0: 3, 1: 9}, 10), _split({0: 8, 1: 8}, 200)
    before = train.images.copy()
    rebalance(train, fake, ratio=1.0, seed=0)
    assert np.array_equal(train.images, before)
    with pytest.raises(MedgenError, match=r"ratio must be in \[0, 1\]"):
        rebalance(train, fake, ratio=1.5, seed=0)
    with pytest.raises(DataError, match="needs 6 synthetic images of class 0, only 4"):
        rebalance(train, _split({0: 4, 1: 4}, 200), ratio=1.0, seed=0)


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return Generator(latent_dim=8, n_classes=2, channels=4, embed_dim=2).eval()


def test_sample_shapes_range_and_seed(generator):
    split = sample(generator, [1, 0], 5, seed=3)
    assert split.images.shape == (10, 28, 28) and split.images.dtype == np.uint8
    assert split.labels.tolist() == [1] * 5 + [0] * 5 and split.labels.dtype == np.int64
    assert np.array_equal(split.images, sample(generator, [1, 0], 5, seed=3).images)
    assert not np.array_equal(split.images, sample(generator, [1, 0], 5, seed=4).images)
    like = sample_like(generator, np.array([0, 1, 1, 1]), seed=0)
    assert np.bincount(like.labels).tolist() == [1, 3]


@pytest.mark.parametrize(
    "labels, n, message",
    [
        ([2], 5, r"label\(s\) \[2\] out of range.*0..1"),
        ([-1], 5, r"label\(s\) \[-1\] out of range"),
        ([0], 0, "sample count must be a positive integer, got 0"),
        ([0], -3, "sample count must be a positive integer, got -3"),
        ([], 3, "no label requested"),
    ],
)
def test_sample_rejects_bad_requests(generator, labels, n, message):
    with pytest.raises(MedgenError, match=message):
        sample(generator, labels, n, seed=0)


@pytest.mark.parametrize(
    "override, message",
    [
        ("generate.samples_per_class=0", "generate.samples_per_class: must be >= 1"),
        ("generate.samples_per_class=-5", "generate.samples_per_class: must be >= 1"),
        ("generate.labels=[-1]", "generate.labels: class labels must be >= 0"),
        ("generate.variant=dcgan", "generate.variant: must be one of cdcgan, acgan, wgan-gp"),
        ("generate.diffaug=[flip]", "generate.diffaug: unknown policy"),
    ],
)
def test_config_rejects_bad_generate_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "params.yaml", overrides=[override])


def test_samples_file_round_trip(tmp_path, generator):
    split = sample(generator, [0, 1], 4, seed=0)
    loaded = load_samples(save_samples(split, tmp_path / "s" / "samples.npz"))
    assert np.array_equal(loaded.images, split.images) and np.array_equal(loaded.labels, split.labels)
    with pytest.raises(DataError, match="run `medgen stage generate`"):
        load_samples(tmp_path / "absent.npz")
