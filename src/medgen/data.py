"""MedMNIST data: fetch (local file or medmnist download), validate, load as arrays and tensors.

The on-disk layout is MedMNIST's npz: ``{split}_images`` (uint8, (N, H, W) grey or (N, H, W, 3) RGB)
and ``{split}_labels`` (integer, (N,) or (N, 1)) for split in train/val/test. Prepared files always
store labels as (N,) int64.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medgen.config import SOURCE_ENV, DataConfig
from medgen.errors import DataError
from medgen.io import copy_file, readable, write_file

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: images uint8 (N, H, W[, C]) and labels int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    flag: str
    n_classes: int
    class_names: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass(frozen=True)
class FlagInfo:
    """What is known about a flag before reading the file (from medmnist's INFO when available)."""

    n_classes: int
    class_names: tuple[str, ...]
    n_channels: int | None  # None: accept grey or RGB
    n_samples: dict[str, int] | None  # None: do not check split sizes


def flag_info(cfg: DataConfig) -> FlagInfo:
    from medmnist.info import INFO  # lazy: medmnist is only needed here

    info = INFO.get(cfg.flag)
    if info is None:
        if cfg.n_classes == 0:
            raise DataError(f"data.flag {cfg.flag!r} is not a MedMNIST flag: set data.n_classes for a custom npz")
        names = tuple(str(i) for i in range(cfg.n_classes))
        return FlagInfo(cfg.n_classes, names, None, None)
    if info["task"] == "multi-label, binary-class":
        raise DataError(f"data.flag {cfg.flag!r} is multi-label; medgen handles single-label tasks only")
    names = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    n_classes = cfg.n_classes or len(names)
    if n_classes != len(names):
        raise DataError(f"data.n_classes={cfg.n_classes} but {cfg.flag} has {len(names)} classes")
    return FlagInfo(n_classes, names, info["n_channels"], dict(info["n_samples"]))


def file_md5(path: str | Path) -> str:
    digest = hashlib.md5()
    with open(readable(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an npz; a missing, truncated or corrupt file (bad zip, bad zlib stream) is a DataError."""
    try:
        with np.load(readable(path), allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable npz (truncated or corrupt: {exc})") from None


def validate_arrays(arrays: dict[str, np.ndarray], info: FlagInfo, size: int, flag: str, where: str) -> Dataset:
    """Check keys, dtypes, shapes, label range and split sizes; return labels flattened to (N,)."""
    missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in arrays]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)} (MedMNIST layout expected)")
    splits = {s: _validate_split(arrays, s, info, size, where) for s in SPLITS}
    return Dataset(flag, info.n_classes, info.class_names, **splits)


def _validate_split(arrays: dict[str, np.ndarray], split: str, info: FlagInfo, size: int, where: str) -> Split:
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if images.dtype != np.uint8:
        raise DataError(f"{where}: {split}_images has dtype {images.dtype}, expected uint8")
    grey, rgb = images.ndim == 3, images.ndim == 4 and images.shape[-1] == 3
    if not (grey or rgb) or images.shape[1:3] != (size, size):
        raise DataError(f"{where}: {split}_images has shape {images.shape}, expected (N, {size}, {size}[, 3])")
    channels = 1 if grey else 3
    if info.n_channels is not None and channels != info.n_channels:
        raise DataError(f"{where}: {split}_images has {channels} channel(s), expected {info.n_channels}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: {split}_labels has shape {labels.shape}, expected (N,) or (N, 1)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: {split}_labels has dtype {labels.dtype}, expected integers")
    if len(labels) != len(images):
        raise DataError(f"{where}: {split} has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{where}: {split} split is empty")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= info.n_classes:
        raise DataError(f"{where}: {split}_labels range {low}..{high}, expected 0..{info.n_classes - 1}")
    if info.n_samples is not None and len(labels) != info.n_samples[split]:
        raise DataError(f"{where}: {split} has {len(labels)} samples, expected {info.n_samples[split]}")
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def load_npz(path: str | Path, cfg: DataConfig) -> Dataset:
    """Read and validate a MedMNIST-layout npz (raw or prepared)."""
    path = Path(path)
    return validate_arrays(read_npz(path), flag_info(cfg), cfg.size, cfg.flag, str(path))


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy so that dst is either absent or complete, never half-written."""
    copy_file(src, dst)


def save_npz(dataset: Dataset, path: Path) -> None:
    """Write a prepared dataset atomically (medgen.io.write_file)."""
    arrays = {}
    for name in SPLITS:
        arrays[f"{name}_images"] = dataset.split(name).images
        arrays[f"{name}_labels"] = dataset.split(name).labels
    write_file(path, lambda handle: np.savez_compressed(handle, **arrays))


def fetch_raw(cfg: DataConfig) -> tuple[Path, str]:
    """Make sure ``cfg.raw_path`` exists; return it and where it came from.

    Order: an existing raw file; the local source (data.source or $MEDGEN_DATA_SOURCE), validated
    before it is copied; a medmnist download.
    """
    raw = cfg.raw_path
    if raw.exists():
        return raw, "raw"
    source = cfg.source_path()
    if source:
        if not Path(source).is_file():
            raise DataError(f"local source {source!r} (data.source or ${SOURCE_ENV}) is not a file")
        load_npz(source, cfg)  # validate before anything lands in raw_dir
        atomic_copy(Path(source), raw)
        return raw, "local"
    if not cfg.download:
        raise DataError(f"{raw} not found, no local source (data.source / ${SOURCE_ENV}) and data.download is false")
    _download(cfg, raw)
    return raw, "download"


def _download(cfg: DataConfig, raw: Path) -> None:
    import medmnist
    from medmnist.info import INFO

    if cfg.flag not in INFO:
        raise DataError(f"data.flag {cfg.flag!r} is not a MedMNIST flag and {raw} does not exist")
    dataset_cls = getattr(medmnist, INFO[cfg.flag]["python_class"])
    with tempfile.TemporaryDirectory(dir=raw.parent if raw.parent.exists() else None) as tmp:
        try:
            dataset_cls(split="train", download=True, root=tmp, size=cfg.size)
        except Exception as exc:  # medmnist raises bare RuntimeError/URLError offline
            reason = (str(exc).strip().splitlines() or [""])[0][:200]  # medmnist's messages span lines
            raise DataError(
                f"download of {cfg.flag} (size {cfg.size}) failed ({type(exc).__name__}: {reason}); "
                f"offline? point data.source or ${SOURCE_ENV} at a local npz"
            ) from None
        (downloaded,) = Path(tmp).glob("*.npz")
        atomic_copy(downloaded, raw)


def to_tensors(split: Split, device: str = "cpu"):
    """uint8 (N, H, W[, C]) -> float32 tensor (N, C, H, W) in [-1, 1], labels int64 (N,).

    [-1, 1] is the one model-input convention in medgen: a tanh generator's output feeds the
    classifier unchanged, and exported ONNX models document it in their metadata.
    """
    import torch

    images = torch.from_numpy(split.images).float().div_(127.5).sub_(1.0)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous().to(device), torch.from_numpy(split.labels).to(device)


def to_uint8(images) -> np.ndarray:
    """Inverse of to_tensors for images: float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W[, C])."""
    import torch

    array = images.detach().cpu().float().clamp(-1, 1).add(1).mul(127.5).round().to(dtype=torch.uint8).numpy()
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)


def class_counts(labels: np.ndarray, n_classes: int) -> dict[str, int]:
    counts = np.bincount(labels, minlength=n_classes)
    return {str(c): int(n) for c, n in enumerate(counts)}


def load_prepared(cfg: DataConfig) -> Dataset:
    """The prepare stage's output, re-validated (cheap) so a stale or edited file fails loudly."""
    path = cfg.prepared_path
    if not path.exists():
        raise DataError(f"{path} not found: run `medgen stage prepare` (or `dvc repro prepare`) first")
    return load_npz(path, cfg)
