"""Datasets: fetch (local file/folder or download), validate, load as arrays and tensors.

The on-disk layout is MedMNIST's npz: ``{split}_images`` (uint8, (N, S, S) grey or (N, S, S, 3) RGB)
and ``{split}_labels`` (integer, (N,) or (N, 1)) for split in train/val/test, plus an optional
``metadata`` (a JSON string: how the file was made, e.g. a carved validation split). Prepared files
always store labels as (N,) int64. Channels and size are whatever the data holds: every model reads them
from here (`Dataset.image_shape`), none assumes them.

Flags: MedMNIST's 2D single-label flags (sizes 28, 64, 128, 224: MedMNIST+), the assignment's `cifar10`
and `fashionmnist` (native files, medgen.native), or any name for a custom npz (then set data.n_classes).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgen import native
from medgen.config import SOURCE_ENV, DataConfig
from medgen.errors import ConfigError, DataError
from medgen.io import copy_file, readable, savez_compressed, write_file

SPLITS = ("train", "val", "test")
MEDMNIST_SIZES = (28, 64, 128, 224)  # MedMNIST+ ships every 2D flag at these sides
MEDMNIST_BASE = MEDMNIST_SIZES[0]  # the original MedMNIST side: its file names carry no size suffix
METADATA_KEY = "metadata"


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
    metadata: dict[str, Any] = field(default_factory=dict)  # how the file was made (stored when not empty)

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, size, size) of every image: what each model's input and output are built for."""
        return image_shape(self.train.images)


def image_shape(images: np.ndarray) -> tuple[int, int, int]:
    """uint8 images (N, S, S) or (N, S, S, C) -> (C, S, S)."""
    channels = 1 if images.ndim == 3 else int(images.shape[3])
    return channels, int(images.shape[1]), int(images.shape[2])


@dataclass(frozen=True)
class FlagInfo:
    """What is known about a flag before reading the file (from medmnist's INFO when available)."""

    n_classes: int
    class_names: tuple[str, ...]
    n_channels: int | None  # None: accept grey or RGB
    n_samples: dict[str, int] | None  # None: do not check split sizes


def flag_info(cfg: DataConfig) -> FlagInfo:
    """Classes, channels and split sizes known for cfg.flag; a size the flag does not exist at is a ConfigError."""
    from medmnist.info import INFO  # lazy: medmnist is only needed here

    known = native.FLAGS.get(cfg.flag)
    if known is not None:
        if cfg.size != known.size:
            raise ConfigError(
                f"data.size: {cfg.flag} images are {known.size}x{known.size}, got {cfg.size}; "
                f"set data.size={known.size}"
            )
        _check_n_classes(cfg, len(known.class_names))
        return FlagInfo(
            len(known.class_names), known.class_names, known.channels, known.n_samples() if cfg.check_counts else None
        )
    info = INFO.get(cfg.flag)
    if info is None:
        if cfg.n_classes == 0:
            raise DataError(f"data.flag {cfg.flag!r} is not a known flag: set data.n_classes for a custom npz")
        names = tuple(str(i) for i in range(cfg.n_classes))
        return FlagInfo(cfg.n_classes, names, None, None)
    if info["task"] == "multi-label, binary-class":
        raise DataError(f"data.flag {cfg.flag!r} is multi-label; medgen handles single-label tasks only")
    if cfg.size not in MEDMNIST_SIZES:
        sizes = ", ".join(map(str, MEDMNIST_SIZES))
        raise ConfigError(f"data.size: MedMNIST ships {cfg.flag} at {sizes} px, got {cfg.size}")
    names = tuple(info["label"][str(i)] for i in range(len(info["label"])))
    _check_n_classes(cfg, len(names))
    return FlagInfo(
        cfg.n_classes or len(names), names, info["n_channels"], dict(info["n_samples"]) if cfg.check_counts else None
    )


def _check_n_classes(cfg: DataConfig, known: int) -> None:
    if cfg.n_classes not in (0, known):
        raise DataError(f"data.n_classes={cfg.n_classes} but {cfg.flag} has {known} classes")


def medmnist_file_name(flag: str, size: int) -> str:
    """MedMNIST's own file name: `<flag>.npz` at 28 px, `<flag>_<size>.npz` for the MedMNIST+ sizes."""
    return f"{flag}.npz" if size == MEDMNIST_BASE else f"{flag}_{size}.npz"


def file_md5(path: str | Path) -> str:
    """Hex md5 of a file (MedMNIST publishes md5s of its npz files): a fingerprint, not security."""
    digest = hashlib.md5(usedforsecurity=False)  # a file fingerprint (MedMNIST publishes md5s), not security
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


def npz_image_shape(path: Path, split: str = "train") -> tuple[int, ...] | None:
    """Shape of `<split>_images` read from the npy header only (no pixels decoded); None when unreadable."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{split}_images.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, _dtype = read(handle)
            return tuple(shape)
    except Exception:  # noqa: BLE001 - any failure means "unknown"; load_npz reports the real problem
        return None


def _metadata(arrays: dict[str, np.ndarray], where: str) -> dict[str, Any]:
    value = arrays.get(METADATA_KEY)
    if value is None:
        return {}
    try:
        if value.ndim != 0 or value.dtype.kind != "U":
            raise ValueError(f"a {value.dtype} array of shape {value.shape}")
        parsed = json.loads(str(value[()]))
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise DataError(f"{where}: '{METADATA_KEY}' must be a JSON object string ({exc})") from None
    return parsed


def validate_arrays(
    arrays: dict[str, np.ndarray],
    info: FlagInfo,
    size: int,
    flag: str,
    where: str,
    metadata: dict[str, Any] | None = None,
) -> Dataset:
    """Check keys, dtypes, shapes, label range and split sizes; return labels flattened to (N,).

    `metadata` (else the arrays' own `metadata` entry) travels with the dataset into the prepared file.
    """
    missing = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels") if f"{s}_{kind}" not in arrays]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)} (MedMNIST layout expected)")
    splits = {s: _validate_split(arrays, s, info, size, where) for s in SPLITS}
    shapes = {s: image_shape(split.images) for s, split in splits.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{where}: splits differ in image shape {shapes}")
    meta = metadata if metadata is not None else _metadata(arrays, where)
    return Dataset(flag, info.n_classes, info.class_names, **splits, metadata=meta)


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
    """Write a prepared dataset atomically (medgen.io.write_file); byte-stable (no zip timestamps): a DVC out."""
    arrays = {}
    for name in SPLITS:
        arrays[f"{name}_images"] = dataset.split(name).images
        arrays[f"{name}_labels"] = dataset.split(name).labels
    if dataset.metadata:  # only when there is something to record: MedMNIST files stay byte-identical
        arrays[METADATA_KEY] = np.array(json.dumps(dataset.metadata, sort_keys=True))
    write_file(path, lambda handle: savez_compressed(handle, **arrays))


def fetch_raw(cfg: DataConfig) -> tuple[Path, str]:
    """Make sure ``cfg.raw_path`` holds the flag's data at data.size; return it and where it came from.

    Order: the raw file (unless it holds another size: data.size changed); MedMNIST's own file
    (`<flag>_<size>.npz`) dropped into raw_dir; the local source (data.source or $MEDGEN_DATA_SOURCE:
    an npz, a folder holding MedMNIST's file for the size or the flag's native files), validated before
    anything lands in raw_dir; a download (medmnist, or torchvision for cifar10/fashionmnist).
    """
    raw = cfg.raw_path
    held = npz_image_shape(raw) if raw.exists() else None
    if raw.exists() and (held is None or held[1:3] == (cfg.size, cfg.size)):
        return raw, "raw"  # unreadable headers fall through to load_npz, which names the problem
    dropped = Path(cfg.raw_dir) / medmnist_file_name(cfg.flag, cfg.size)
    if dropped != raw and dropped.is_file():
        load_npz(dropped, cfg)
        atomic_copy(dropped, raw)
        return raw, "raw_dir"
    source = cfg.source_path()
    if source:
        return _from_source(cfg, Path(source), raw)
    if not cfg.download:
        stale = f"{raw} holds {held[1]} px images, data.size is {cfg.size}; " if held else f"{raw} not found, "
        raise DataError(f"{stale}no local source (data.source / ${SOURCE_ENV}) and data.download is false")
    _download(cfg, raw)
    return raw, "download"


def _from_source(cfg: DataConfig, source: Path, raw: Path) -> tuple[Path, str]:
    """A local npz, or a folder (MedMNIST's file name for the size, or native files), into raw_dir."""
    known = native.FLAGS.get(cfg.flag)
    if source.is_dir() and known is not None:
        _write_native(cfg, known, source, raw)
        return raw, "local-native"
    if source.is_dir():
        named = source / medmnist_file_name(cfg.flag, cfg.size)
        if not named.is_file():
            raise DataError(
                f"local source folder {source} has no {named.name} (MedMNIST's name for {cfg.flag} at {cfg.size} px)"
            )
        source = named
    elif not source.is_file():
        raise DataError(f"local source {str(source)!r} (data.source or ${SOURCE_ENV}) is not a file or folder")
    held = npz_image_shape(source)
    if held is not None and held[1:3] != (cfg.size, cfg.size):
        # e.g. breastmnist_64.npz beside breastmnist.npz
        sibling = source.parent / medmnist_file_name(cfg.flag, cfg.size)
        if not sibling.is_file():
            raise DataError(
                f"{source} holds {held[1]} px images and there is no {sibling.name} beside it for data.size={cfg.size}"
            )
        source = sibling
    load_npz(source, cfg)  # validate before anything lands in raw_dir
    atomic_copy(source, raw)
    return raw, "local"


def _write_native(cfg: DataConfig, known: native.NativeFlag, folder: Path, raw: Path) -> None:
    """Native files -> validated MedMNIST-layout npz at `raw` (val carved from train, recorded in metadata)."""
    arrays, metadata = native.convert(known, folder)
    dataset = validate_arrays(arrays, flag_info(cfg), cfg.size, cfg.flag, str(folder), metadata=metadata)
    save_npz(dataset, raw)


def _download(cfg: DataConfig, raw: Path) -> None:
    import medmnist
    from medmnist.info import INFO

    known = native.FLAGS.get(cfg.flag)
    if known is not None:
        _download_native(cfg, known, raw)
        return
    if cfg.flag not in INFO:
        raise DataError(f"data.flag {cfg.flag!r} is not a known flag and {raw} does not exist")
    flag_info(cfg)  # a size MedMNIST does not ship fails before any download
    dataset_cls = getattr(medmnist, INFO[cfg.flag]["python_class"])
    with tempfile.TemporaryDirectory(dir=raw.parent if raw.parent.exists() else None) as tmp:
        try:
            dataset_cls(split="train", download=True, root=tmp, size=cfg.size)
        except Exception as exc:  # medmnist raises bare RuntimeError/URLError offline
            reason = (str(exc).strip().splitlines() or [""])[0][:200]  # medmnist's messages span lines
            raise DataError(
                f"download of {cfg.flag} (size {cfg.size}) failed ({type(exc).__name__}: {reason}); "
                f"offline? point data.source or ${SOURCE_ENV} at a local npz or a folder holding "
                f"{medmnist_file_name(cfg.flag, cfg.size)}"
            ) from None
        (downloaded,) = Path(tmp).glob("*.npz")
        atomic_copy(downloaded, raw)


def _download_native(cfg: DataConfig, known: native.NativeFlag, raw: Path) -> None:
    """torchvision fetches the native files (md5-checked); medgen's own readers convert them."""
    import torchvision.datasets

    with tempfile.TemporaryDirectory(dir=raw.parent if raw.parent.exists() else None) as tmp:
        try:
            getattr(torchvision.datasets, known.torchvision_class)(root=tmp, train=True, download=True)
        except Exception as exc:  # URLError, socket errors, checksum failures
            raise DataError(
                f"download of {cfg.flag} through torchvision failed ({type(exc).__name__}: {exc}); offline? point "
                f"data.source or ${SOURCE_ENV} at a folder holding its native files"
            ) from None
        _write_native(cfg, known, Path(tmp), raw)


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
    """Images per class as {"0": n0, "1": n1, ...} (every class 0..n_classes-1, zeros included)."""
    counts = np.bincount(labels, minlength=n_classes)
    return {str(c): int(n) for c, n in enumerate(counts)}


def load_prepared(cfg: DataConfig) -> Dataset:
    """The prepare stage's output, re-validated (cheap) so a stale or edited file fails loudly."""
    path = cfg.prepared_path
    if not path.exists():
        raise DataError(f"{path} not found: run `medgen stage prepare` (or `dvc repro prepare`) first")
    return load_npz(path, cfg)
