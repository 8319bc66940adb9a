"""Synthetic samples: drawing them from a generator, storing them, and rebalancing a training split.

Synthetic images only ever enter a *training* split (`rebalance`); validation and test stay real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medgen.data import Split, read_npz
from medgen.errors import DataError, MedgenError
from medgen.io import savez_compressed

if TYPE_CHECKING:
    from medgen.config import Config


def samples_path(cfg: Config) -> Path:
    """Where the generate stage writes its samples and augment reads them: <generate.samples_dir>/<flag>/samples.npz."""
    return Path(cfg.generate.samples_dir) / cfg.data.flag / "samples.npz"


def validate_request(labels: Sequence[int], n: int, n_classes: int) -> None:
    """A sampling request: every label in 0..n_classes-1 and a positive count, else a MedgenError."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise MedgenError(f"sample count must be a positive integer, got {n!r}")
    bad = [int(c) for c in labels if not 0 <= int(c) < n_classes]
    if bad:
        raise MedgenError(f"label(s) {bad} out of range: this generator knows classes 0..{n_classes - 1}")
    if len(labels) == 0:
        raise MedgenError("no label requested: give at least one class to sample")


class GanSampler:
    """The sampler interface for a GAN generator G(z, labels): z ~ N(0, I) of size latent_dim from `rng`."""

    max_batch = 500

    def __init__(self, generator) -> None:
        self.generator = generator
        self.n_classes = generator.n_classes

    def draw(self, labels, rng):
        """labels (N,) int64 -> images (N, C, H, W) in [-1, 1] (G in eval mode, its mode restored after)."""
        import torch

        g = self.generator
        device = next(g.parameters()).device
        z = torch.randn(len(labels), g.latent_dim, generator=rng)
        was_training = g.training
        g.eval()
        with torch.no_grad():
            images = g(z.to(device), labels.to(device))
        g.train(was_training)
        return images


def as_sampler(generator):
    """Anything synthetic.sample accepts -> an object with `n_classes`, `max_batch` and `draw(labels, rng)`.

    A sampler passes through; a diffusion denoiser (it has a `null_label`) gets medgen.diffusion's DDIM
    sampler with its default steps and guidance; any other module is taken as a GAN generator G(z, labels).
    """
    if hasattr(generator, "draw"):
        return generator
    if hasattr(generator, "null_label"):
        from medgen.diffusion import DiffusionSampler

        return DiffusionSampler(generator)
    return GanSampler(generator)


def sample(generator, labels: Sequence[int], n: int, seed: int, batch: int = 500) -> Split:
    """`n` images per label from a generator or sampler (`as_sampler`) -> uint8 Split (len(labels) * n, S, S[, C]).

    Same seed, same images: the random inputs come from a torch.Generator seeded here, not the global RNG,
    drawn batch after batch (`batch`, capped by the sampler's max_batch) in label order.
    """
    import torch

    from medgen.data import to_uint8

    sampler = as_sampler(generator)
    validate_request(labels, n, sampler.n_classes)
    rng = torch.Generator().manual_seed(seed)
    wanted = torch.tensor([int(c) for c in labels for _ in range(n)], dtype=torch.int64)
    step = min(batch, getattr(sampler, "max_batch", batch))
    chunks = [to_uint8(sampler.draw(wanted[start : start + step], rng)) for start in range(0, len(wanted), step)]
    return Split(np.concatenate(chunks), wanted.numpy())


def sample_like(generator, labels: np.ndarray, seed: int) -> Split:
    """Synthetic images with exactly the class counts of `labels` (N,)."""
    sampler = as_sampler(generator)
    counts = np.bincount(labels, minlength=sampler.n_classes)
    parts = [sample(sampler, [c], int(k), seed + c) for c, k in enumerate(counts) if k > 0]
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def save_samples(split: Split, path: str | Path) -> Path:
    """`images` uint8 (N, S, S[, C]) and `labels` int64 (N,) in one npz, written atomically; byte-stable (a DVC out)."""
    from medgen.io import write_file

    return write_file(path, lambda handle: savez_compressed(handle, images=split.images, labels=split.labels))


def load_samples(path: str | Path) -> Split:
    """The generate stage's samples (checked: uint8 images (N, S, S[, 3]), one label each), else a DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found: run `medgen stage generate` (or `dvc repro generate`) first")
    arrays = read_npz(path)
    if {"images", "labels"} - set(arrays):
        raise DataError(f"{path}: expected keys images and labels, got {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    grey_or_rgb = images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)
    if images.dtype != np.uint8 or not grey_or_rgb or len(images) != len(labels):
        raise DataError(
            f"{path}: images must be uint8 (N, S, S) or (N, S, S, 3) with one label each, "
            f"got {images.dtype} {images.shape}"
        )
    return Split(images, labels.astype(np.int64))


def rebalance(train: Split, synthetic: Split, ratio: float = 1.0, seed: int = 0) -> Split:
    """Real training split + synthetic samples that fill `ratio` of each class's gap to the largest class.

    ratio = share of the gap filled: 1.0 gives equal counts (BreastMNIST 147/399 -> 399/399, the recipe of
    reference report 000), 0.5 adds half of the 252 missing malignant images, 0 returns train unchanged.
    Every real sample is kept, in order, first; synthetic ones are drawn without replacement (seeded)
    from `synthetic`'s images of that class. Only ever pass a training split: val/test stay real.
    """
    if not 0.0 <= ratio <= 1.0:
        raise MedgenError(f"rebalance ratio must be in [0, 1] (share of the class gap filled), got {ratio}")
    n_classes = int(max(train.labels.max(), synthetic.labels.max() if len(synthetic) else 0)) + 1
    counts = np.bincount(train.labels, minlength=n_classes)
    rng = np.random.default_rng(seed)
    picks = []
    for label in range(n_classes):
        need = int(round((counts.max() - counts[label]) * ratio))
        pool = np.flatnonzero(synthetic.labels == label)
        if need > len(pool):
            raise DataError(f"rebalance needs {need} synthetic images of class {label}, only {len(pool)} available")
        picks.append(rng.choice(pool, need, replace=False))
    chosen = np.concatenate(picks).astype(np.int64)
    return Split(
        np.concatenate([train.images, synthetic.images[chosen]]),
        np.concatenate([train.labels, synthetic.labels[chosen]]),
    )
