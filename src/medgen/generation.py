"""The generate stage's library: the real data as generation judges it (tensors and metric features), the
metric feature net's fit, validation FD, the quality report of a generator, and per-class sample grids."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from medgen import data, metrics, plots, synthetic
from medgen.config import Config
from medgen.gan_training import extract_features, fit_feature_net
from medgen.models.features import FeatureNet
from medgen.training import save_checkpoint

GRID_PER_CLASS = 16  # images per class in each checkpoint grid


@dataclass
class Real:
    """The real data as the stage uses it: tensors in [-1, 1] and metric features of each set."""

    dataset: data.Dataset
    x: torch.Tensor  # train images (N, C, S, S)
    y: torch.Tensor  # train labels (N,)
    net: FeatureNet
    train_features: np.ndarray  # (N, feature_dim)
    heldout: data.Split  # val + test, for the final report only
    heldout_features: np.ndarray


def prepare_real(cfg: Config, dataset: data.Dataset, device: torch.device) -> Real:
    x, y = data.to_tensors(dataset.train, str(device))
    net = fit_feature_net(x, y, dataset.n_classes, cfg.generate, device)
    shape = {"n_classes": dataset.n_classes, "image_shape": list(dataset.image_shape)}
    save_checkpoint(cfg.generate.feature_checkpoint, net, config=asdict(cfg.generate) | shape, metrics={})
    heldout = data.Split(
        np.concatenate([dataset.val.images, dataset.test.images]),
        np.concatenate([dataset.val.labels, dataset.test.labels]),
    )
    return Real(
        dataset, x, y, net, extract_features(net, x), heldout, extract_features(net, data.to_tensors(heldout)[0])
    )


def val_fd(generator: torch.nn.Module, real: Real, n: int, seed: int) -> float:
    """FD between train-real features and n synthetic samples with val's class proportions."""
    val = real.dataset.val.labels
    labels = val if n == len(val) else np.random.default_rng(seed).choice(val, n)
    fake = synthetic.sample_like(generator, np.sort(labels), seed)
    return metrics.frechet_distance(real.train_features, extract_features(real.net, data.to_tensors(fake)[0]))


def checkpoint_grid(generator: torch.nn.Module, n_classes: int, seed: int):
    """One row block per class, the same z every checkpoint so the grids show training progress."""
    split = synthetic.sample(generator, list(range(n_classes)), GRID_PER_CLASS, seed)
    return plots.montage(split.images, columns=GRID_PER_CLASS)


def evaluate(cfg: Config, generator: torch.nn.Module, real: Real) -> dict[str, Any]:
    """FD/KID/C2ST of fresh synthetic sets (held-out's class counts; train's class counts for C2ST)."""
    seed = cfg.seed + 1000  # not the seeds of the search's or the written samples' z
    like_heldout = synthetic.sample_like(generator, real.heldout.labels, seed)
    like_train = synthetic.sample_like(generator, real.dataset.train.labels, seed + 1000)
    feats = lambda split: extract_features(real.net, data.to_tensors(split)[0])  # noqa: E731
    return metrics.generation_quality(
        (real.train_features, real.dataset.train.labels),
        (real.heldout_features, real.heldout.labels),
        (feats(like_heldout), like_heldout.labels),
        feats(like_train),
        seed=cfg.seed,
    )
