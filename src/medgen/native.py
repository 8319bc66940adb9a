"""The assignment's datasets in their native file formats, converted to medgen's MedMNIST layout.

* CIFAR-10, python version: ``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch`` and
  ``batches.meta``, each a pickled dict (``data``: uint8 (N, 3072), rows of 1024 red, 1024 green, 1024 blue
  values of a 32x32 image; ``labels``: N ints). Read with a restricted unpickler that builds only what those
  files contain (dicts, lists, strings, ints and numpy uint8 arrays): a pickle naming any other global
  (``os.system``, say) is refused before anything runs. Plain ``pickle.load`` on a user's file would run it.
* Fashion-MNIST: the idx files ``train-images-idx3-ubyte.gz`` etc. (big-endian header: magic, dimensions;
  then raw uint8 pixels or labels), in the given folder or torchvision's ``FashionMNIST/raw/`` below it.

Neither ships a validation split: `carve_val` takes one from train (stratified, fixed seed) and the
choice is recorded in the dataset's metadata. Every problem with a file is a one-line DataError naming it.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medgen.errors import DataError

SPLIT_SEED = 0  # the validation carve is a property of the dataset, the same for every experiment seed


@dataclass(frozen=True)
class NativeFlag:
    """A dataset medgen converts from its native files (torchvision downloads the same files)."""

    name: str
    class_names: tuple[str, ...]
    channels: int
    size: int
    n_train: int  # native training images, before the validation carve
    n_test: int
    n_val: int  # carved from train (n_train - n_val stay in train)
    torchvision_class: str
    reader: Callable[[Path], dict[str, np.ndarray]]

    @property
    def val_fraction(self) -> float:
        return self.n_val / self.n_train

    def n_samples(self) -> dict[str, int]:
        """The published split sizes after the carve (checked unless data.check_counts is false)."""
        return {"train": self.n_train - self.n_val, "val": self.n_val, "test": self.n_test}


# ------------------------------------------------------------------------------------------ CIFAR-10
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_SIDE = 32
# numpy's own array-rebuilding function, found through ndarray's pickle protocol rather than by its
# private module path (numpy.core.multiarray in numpy 1, numpy._core.multiarray in numpy 2; files
# written by either name it). `_codecs.encode` is how Python 3 writes bytes in protocol 2 (a re-saved
# batch); it only turns a str into bytes.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds only plain data and numpy arrays; any other global in the stream is refused."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR-10 batch holds only data)")
        return found


def _unpickle(path: Path) -> dict[str, Any]:
    """A CIFAR-10 pickle as a dict with str keys (Python 2 files: latin1 strings, as torchvision reads them)."""
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        obj = _CifarUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if "refused global" in str(exc):
            raise DataError(f"{path}: not a CIFAR-10 batch ({exc})") from None
        raise DataError(f"{path}: not a readable CIFAR-10 batch (truncated or corrupt: {exc})") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        UnicodeDecodeError,
    ) as exc:
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch (truncated or corrupt: {type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (a {type(obj).__name__}, expected a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> images uint8 (N, 32, 32, 3) and labels int64 (N,)."""
    batch = _unpickle(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels' (keys: {', '.join(sorted(batch))})")
    data, labels = batch["data"], batch["labels"]
    pixels = CIFAR_SIDE * CIFAR_SIDE * 3
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        shape = getattr(data, "shape", None)
        got = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be uint8 (N, {pixels}), got {got} {shape}")
    if not isinstance(labels, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise DataError(f"{path}: 'labels' must be a list of integers")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    _check_labels(path, np.asarray(labels, dtype=np.int64), len(CIFAR_NAMES))
    images = data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)  # channel planes -> (N, H, W, 3)
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def _cifar_folder(folder: Path) -> Path:
    """The folder holding the batch files: `folder/cifar-10-batches-py` (as extracted) or `folder` itself."""
    inner = folder / CIFAR_DIR
    return inner if inner.is_dir() else folder


def read_cifar10(folder: Path) -> dict[str, np.ndarray]:
    """CIFAR-10 python batches -> {train,test}_{images,labels}: images (N, 32, 32, 3) uint8, labels (N,)."""
    where = _cifar_folder(folder)
    missing = [n for n in (*CIFAR_TRAIN, "test_batch") if not (where / n).is_file()]
    if missing:
        raise DataError(
            f"{where}: missing CIFAR-10 file(s) {', '.join(missing)} (expected the python version's "
            f"{CIFAR_DIR}/ folder)"
        )
    meta = where / "batches.meta"
    if meta.is_file():  # optional, but when present it must name CIFAR-10's classes (not CIFAR-100's)
        names = _unpickle(meta).get("label_names")
        names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names or []]
        if tuple(names) != CIFAR_NAMES:
            raise DataError(f"{meta}: label_names {names} are not CIFAR-10's {list(CIFAR_NAMES)}")
    parts = [_cifar_batch(where / n) for n in CIFAR_TRAIN]
    test_images, test_labels = _cifar_batch(where / "test_batch")
    return {
        "train_images": np.concatenate([p[0] for p in parts]),
        "train_labels": np.concatenate([p[1] for p in parts]),
        "test_images": test_images,
        "test_labels": test_labels,
    }


# ------------------------------------------------------------------------------------- Fashion-MNIST
FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_SIDE = 28
_IDX_UBYTE = 0x08


def _fashion_folder(folder: Path) -> Path:
    """`folder/FashionMNIST/raw` (torchvision's layout) when it exists, else `folder`."""
    inner = folder / "FashionMNIST" / "raw"
    return inner if inner.is_dir() else folder


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: not a readable gzip file (truncated or corrupt: {exc})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx ubyte file (.gz, or uncompressed without the suffix) with `ndim` dimensions -> uint8 array."""
    raw = _read_gz(path) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path}: not an idx ubyte file with {ndim} dimension(s) (magic {raw[:4].hex() or 'missing'}, "
            f"expected 0000080{ndim})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: idx header cut short ({len(raw)} bytes; truncated)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: idx payload has {len(raw) - header} bytes, its header {dims} promises {expected} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _fashion_file(where: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (where / name).is_file():
            return where / name
    raise DataError(
        f"{where}: missing Fashion-MNIST file {stem}.gz (expected the four idx files, or "
        "torchvision's FashionMNIST/raw/ folder)"
    )


def read_fashionmnist(folder: Path) -> dict[str, np.ndarray]:
    """Fashion-MNIST idx files -> {train,test}_{images,labels}: images (N, 28, 28) uint8, labels (N,) int64."""
    where = _fashion_folder(folder)
    paths = {key: _fashion_file(where, stem) for key, stem in FASHION_FILES.items()}  # all present before reading
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], 3)
        labels = read_idx(paths[f"{split}_labels"], 1).astype(np.int64)
        if images.shape[1:] != (FASHION_SIDE, FASHION_SIDE):
            expected = (FASHION_SIDE, FASHION_SIDE)
            raise DataError(f"{paths[f'{split}_images']}: images are {images.shape[1:]}, expected {expected}")
        if len(images) != len(labels):
            raise DataError(f"{paths[f'{split}_labels']}: {len(labels)} labels for {len(images)} images")
        _check_labels(paths[f"{split}_labels"], labels, len(FASHION_NAMES))
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


# ------------------------------------------------------------------------------------------ shared
def _check_labels(path: Path, labels: np.ndarray, n_classes: int) -> None:
    if len(labels) == 0:
        raise DataError(f"{path}: no images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise DataError(f"{path}: labels range {low}..{high}, expected 0..{n_classes - 1}")


def carve_val(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int = SPLIT_SEED):
    """Stratified split of a training set: (train images, train labels, val images, val labels, summary).

    Each class gives round(fraction * its count) images (at least one when it has two or more); the
    draw is seeded, and both parts keep the original order. The summary is what the metadata records.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        take = int(round(fraction * len(index)))
        take = min(max(take, 1 if len(index) >= 2 else 0), len(index) - 1)
        chosen.append(rng.choice(index, size=take, replace=False))
    val = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), val)
    summary = {
        "method": "stratified per class, round(fraction * class count), numpy default_rng(seed).choice",
        "seed": seed,
        "fraction": fraction,
        "n_train": int(len(keep)),
        "n_val": int(len(val)),
    }
    return images[keep], labels[keep], images[val], labels[val], summary


FLAGS: dict[str, NativeFlag] = {
    "cifar10": NativeFlag("cifar10", CIFAR_NAMES, 3, CIFAR_SIDE, 50_000, 10_000, 5_000, "CIFAR10", read_cifar10),
    "fashionmnist": NativeFlag(
        "fashionmnist", FASHION_NAMES, 1, FASHION_SIDE, 60_000, 10_000, 5_000, "FashionMNIST", read_fashionmnist
    ),
}


def convert(flag: NativeFlag, folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Native files in `folder` -> MedMNIST-layout arrays (train/val/test) and the metadata to record."""
    native = flag.reader(folder)
    train_x, train_y, val_x, val_y, carve = carve_val(native["train_images"], native["train_labels"], flag.val_fraction)
    arrays = {
        "train_images": train_x,
        "train_labels": train_y,
        "val_images": val_x,
        "val_labels": val_y,
        "test_images": native["test_images"],
        "test_labels": native["test_labels"],
    }
    metadata = {
        "source_format": f"{flag.name} native files",
        "val_carved_from_train": carve,
        "native_counts": {"train": int(len(native["train_labels"])), "test": int(len(native["test_labels"]))},
    }
    return arrays, metadata
