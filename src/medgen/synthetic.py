"""Synthetic samples: drawing them from a generator, storing them, and rebalancing a training split.

Synthetic images only ever enter a *training* split (`rebalance`); validation and test stay real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medgen.data import Split, read_npz
from medgen.errors import DataError, MedgenError


def validate_request(labels: Sequence[int], n: int, n_classes: int) -> None:
    """A sampling request: every label in 0..n_classes-1 and a positive count, else a MedgenError."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise MedgenError(f"sample count must be a positive integer, got {n!r}")
    bad = [int(c) for c in labels if not 0 <= int(c) < n_classes]
    if bad:
        raise MedgenError(f"label(s) {bad} out of range: this generator knows classes 0..{n_classes - 1}")
    if len(labels) == 0:
        raise MedgenError("no label requested: give at least one class to sample")


def sample(generator, labels: Sequence[int], n: int, seed: int, batch: int = 500) -> Split:
    """`n` images per label from G(z, labels) -> uint8 Split (len(labels) * n, 28, 28), labels int64.

    Same seed, same images: z comes from a torch.Generator seeded here, not the global RNG.
    """
    import torch

    from medgen.data import to_uint8

    validate_request(labels, n, generator.n_classes)
    device = next(generator.parameters()).device
    rng = torch.Generator().manual_seed(seed)
    wanted = torch.tensor([int(c) for c in labels for _ in range(n)], dtype=torch.int64)
    was_training = generator.training
    generator.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(wanted), batch):
            y = wanted[start : start + batch]
            z = torch.randn(len(y), generator.latent_dim, generator=rng)
            chunks.append(to_uint8(generator(z.to(device), y.to(device))))
    generator.train(was_training)
    return Split(np.concatenate(chunks), wanted.numpy())


def sample_like(generator, labels: np.ndarray, seed: int) -> Split:
    """Synthetic images with exactly the class counts of `labels` (N,)."""
    counts = np.bincount(labels, minlength=generator.n_classes)
    parts = [sample(generator, [c], int(k), seed + c) for c, k in enumerate(counts) if k > 0]
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def save_samples(split: Split, path: str | Path) -> Path:
    """`images` uint8 (N, 28, 28) and `labels` int64 (N,) in one npz, written atomically."""
    from medgen.io import write_file

    return write_file(path, lambda handle: np.savez_compressed(handle, images=split.images, labels=split.labels))


def load_samples(path: str | Path) -> Split:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found: run `medgen stage generate` (or `dvc repro generate`) first")
    arrays = read_npz(path)
    if {"images", "labels"} - set(arrays):
        raise DataError(f"{path}: expected keys images and labels, got {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"{path}: images must be uint8 (N, H, W) with one label each, got {images.dtype} {images.shape}")
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
