"""Datasets written in the assignment's native formats, for tests and for runs without the real files.

* `write_cifar10` / `write_fashionmnist`: arrays -> the files CIFAR-10 (python version) and Fashion-MNIST
  ship, byte layout as the originals (CIFAR-10: pickled dicts of channel-planar uint8 rows; Fashion:
  gzipped big-endian idx), so medgen.native reads them exactly as it reads the real ones.
* `skimage_patches`: the CIFAR-10 stand-in of docs/q1.md: 32x32 RGB patches cut at random from ten of
  scikit-image's bundled sample pictures, class = source picture. These machines cannot download
  CIFAR-10; this set exercises the same code end to end, its numbers say nothing about CIFAR-10's.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from medgen import native

# Ten colour (or colourised grey) pictures bundled with scikit-image (no download): class i = picture i.
SKIMAGE_PICTURES = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "brick",
    "grass",
)


def write_cifar10(
    folder: str | Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    label_names: tuple[str, ...] = native.CIFAR_NAMES,
) -> Path:
    """images uint8 (N, 32, 32, 3), labels (N,) -> folder/cifar-10-batches-py/ (5 train batches, test, meta)."""
    out = Path(folder) / native.CIFAR_DIR
    out.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train[1])), len(native.CIFAR_TRAIN))
    for i, (name, index) in enumerate(zip(native.CIFAR_TRAIN, parts), start=1):
        _write_batch(out / name, train[0][index], train[1][index], f"training batch {i} of 5")
    _write_batch(out / "test_batch", test[0], test[1], "testing batch 1 of 1")
    meta = {"num_cases_per_batch": len(parts[0]), "label_names": list(label_names), "num_vis": 3072}
    (out / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, label: str) -> None:
    rows = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))  # (N, 3072): R, G, B planes
    batch = {
        "batch_label": label,
        "labels": [int(v) for v in labels],
        "data": rows,
        "filenames": [f"standin_{i:05d}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(batch, protocol=2))  # protocol 2, as the original Python 2 files


def write_fashionmnist(
    folder: str | Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> Path:
    """images uint8 (N, 28, 28), labels (N,) -> the four gzipped idx files in `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in (("train", train), ("test", test)):
        _write_idx(out / f"{native.FASHION_FILES[f'{split}_images']}.gz", np.asarray(images, dtype=np.uint8))
        _write_idx(out / f"{native.FASHION_FILES[f'{split}_labels']}.gz", np.asarray(labels, dtype=np.uint8))
    return out


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


def skimage_patches(per_class: int, seed: int, side: int = native.CIFAR_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` random side x side RGB patches of each SKIMAGE_PICTURES picture -> uint8 images
    (10 * per_class, side, side, 3) and labels (10 * per_class,), class i = picture i.

    Pictures narrower than 4 * side are first upscaled (nearest) so patches are not all the same few pixels.
    """
    from skimage import data as samples  # scikit-image: in requirements.lock (medmnist depends on it)

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(SKIMAGE_PICTURES):
        loaded = getattr(samples, name)()
        # stereo_motorcycle returns (left, right, disparity)
        picture = _rgb(loaded[0] if isinstance(loaded, tuple) else loaded)
        scale = max(1, -(-4 * side // min(picture.shape[:2])))
        picture = picture.repeat(scale, 0).repeat(scale, 1)
        tops = rng.integers(0, picture.shape[0] - side + 1, per_class)
        lefts = rng.integers(0, picture.shape[1] - side + 1, per_class)
        images += [picture[t : t + side, s : s + side] for t, s in zip(tops, lefts)]
        labels += [label] * per_class
    return np.stack(images).astype(np.uint8), np.asarray(labels, dtype=np.int64)


def _rgb(picture: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from a grey, RGB or RGBA sample picture (float pictures scaled from [0, 1])."""
    if picture.dtype != np.uint8:
        picture = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
    if picture.ndim == 2:
        picture = np.repeat(picture[:, :, None], 3, axis=2)
    return picture[:, :, :3]
