"""The assignment's datasets in their native formats (CIFAR-10 python batches, Fashion-MNIST idx .gz):
round trips, the restricted unpickler, the validation carve, and one-line errors on bad or partial files."""

from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medgen import native
from medgen.config import DataConfig
from medgen.data import fetch_raw, load_npz
from medgen.errors import ConfigError, DataError
from medgen.standin import write_cifar10, write_fashionmnist


def cifar_arrays(n_train: int = 100, n_test: int = 20, seed: int = 0):
    """Labels cycle over the 10 classes; each image is its class's colour plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = np.arange(n) % 10
        base = (labels[:, None, None, None] * np.array([25, 10, 5]) % 256).astype(np.int64)
        images = np.clip(base + rng.integers(0, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        return images, labels

    return make(n_train), make(n_test)


def fashion_arrays(n_train: int = 60, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train) % 10),
        (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), np.arange(n_test) % 10),
    )


def cifar_cfg(tmp_path: Path, source: Path, **extra) -> DataConfig:
    return DataConfig(
        flag="cifar10",
        size=32,
        source=str(source),
        check_counts=False,
        download=False,
        raw_dir=str(tmp_path / "raw"),
        **extra,
    )


# ----------------------------------------------------------------------------------------- CIFAR-10
def test_cifar10_round_trip_keeps_pixels_and_channel_order(tmp_path):
    train, test = cifar_arrays()
    train[0][0] = 0
    train[0][0, 3, 5] = (255, 0, 0)  # one red pixel: channel planes must come back as (H, W, RGB)
    write_cifar10(tmp_path, train, test)
    arrays = native.read_cifar10(tmp_path)
    assert arrays["train_images"].shape == (100, 32, 32, 3) and arrays["test_images"].shape == (20, 32, 32, 3)
    assert np.array_equal(arrays["train_images"], train[0]) and np.array_equal(arrays["test_labels"], test[1])
    assert arrays["train_images"][0, 3, 5].tolist() == [255, 0, 0] and int(arrays["train_images"][0].sum()) == 255


def _short(text: bytes) -> bytes:
    return b"U" + bytes([len(text)]) + text  # SHORT_BINSTRING: how Python 2 pickled a str


def test_a_python2_style_batch_loads():
    """The real CIFAR-10 files are Python 2 protocol-2 pickles: str as SHORT_BINSTRING, numpy.core's
    _reconstruct. A hand-written stream in that form (pixels >= 128 included) must decode exactly."""
    stream = (
        b"\x80\x02}q\x00("
        + _short(b"data")
        + b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85"
        + _short(b"b")
        + b"\x87Rq\x03(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x04"
        + _short(b"u1")
        + b"K\x00K\x01\x87Rq\x05(K\x03"
        + _short(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + _short(bytes(range(250, 256)))
        + b"tb"
        + _short(b"labels")
        + b"]q\x06(K\x00K\x01eu."
    )
    batch = native._CifarUnpickler(io.BytesIO(stream), encoding="latin1").load()
    assert batch["data"].dtype == np.uint8 and batch["data"].tolist() == [[250, 251, 252], [253, 254, 255]]
    assert batch["labels"] == [0, 1]


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_runs_nothing(tmp_path):
    train, test = cifar_arrays()
    folder = write_cifar10(tmp_path, train, test)
    marker = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2: not a CIFAR-10 batch \(refused global posix.system"):
        native.read_cifar10(tmp_path)
    assert not marker.exists()


def test_truncated_cifar_batch_is_one_clear_error(tmp_path):
    train, test = cifar_arrays()
    folder = write_cifar10(tmp_path, train, test)
    whole = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"test_batch: not a readable CIFAR-10 batch \(truncated or corrupt"):
        native.read_cifar10(tmp_path)


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda n: [10] + [0] * (n - 1), r"data_batch_1: labels range 0\.\.10, expected 0\.\.9"),
        (lambda n: [0] * (n - 1), r"data_batch_1: 20 images but 19 labels"),
        (lambda n: ["cat"] * n, r"data_batch_1: 'labels' must be a list of integers"),
    ],
)
def test_mislabelled_cifar_batch(tmp_path, labels, message):
    train, test = cifar_arrays()
    folder = write_cifar10(tmp_path, train, test)
    batch = native._unpickle(folder / "data_batch_1")
    batch["labels"] = labels(len(batch["data"]))
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=message):
        native.read_cifar10(tmp_path)


def test_missing_batch_and_foreign_class_names(tmp_path):
    train, test = cifar_arrays()
    folder = write_cifar10(tmp_path, train, test)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 file.*data_batch_3"):
        native.read_cifar10(tmp_path)
    write_cifar10(tmp_path, train, test, label_names=tuple(f"c{i}" for i in range(10)))  # CIFAR-100-like meta
    with pytest.raises(DataError, match="batches.meta: label_names .* are not CIFAR-10's"):
        native.read_cifar10(folder)  # the batches folder itself is accepted too


def test_carve_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), [100] * 9 + [30])
    images = np.arange(len(labels), dtype=np.int64)  # each "image" is its own index
    a = native.carve_val(images, labels, 0.1)
    b = native.carve_val(images, labels, 0.1)
    assert np.array_equal(a[2], b[2])  # same seed, same split
    train_x, train_y, val_x, val_y, summary = a
    assert np.bincount(val_y).tolist() == [10] * 9 + [3]
    assert sorted(np.concatenate([train_x, val_x]).tolist()) == list(range(len(labels)))
    assert summary["n_val"] == 93 and summary["seed"] == native.SPLIT_SEED
    assert native.FLAGS["cifar10"].n_samples() == {"train": 45_000, "val": 5_000, "test": 10_000}
    assert native.FLAGS["fashionmnist"].n_samples() == {"train": 55_000, "val": 5_000, "test": 10_000}


def test_cifar10_folder_becomes_a_prepared_layout_with_metadata(tmp_path):
    train, test = cifar_arrays()
    write_cifar10(tmp_path / "src", train, test)
    cfg = cifar_cfg(tmp_path, tmp_path / "src")
    raw, origin = fetch_raw(cfg)
    assert origin == "local-native" and raw == tmp_path / "raw" / "cifar10.npz"
    dataset = load_npz(raw, cfg)
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [90, 10, 20]
    assert dataset.image_shape == (3, 32, 32) and dataset.class_names[0] == "airplane"
    assert np.bincount(dataset.val.labels).tolist() == [1] * 10
    assert dataset.metadata["val_carved_from_train"]["n_val"] == 10
    assert dataset.metadata["native_counts"] == {"train": 100, "test": 20}


def test_cifar10_counts_and_size_are_checked(tmp_path):
    train, test = cifar_arrays()
    write_cifar10(tmp_path / "src", train, test)
    with pytest.raises(DataError, match="train has 90 samples, expected 45000"):
        fetch_raw(dataclasses.replace(cifar_cfg(tmp_path, tmp_path / "src"), check_counts=True))
    assert not (tmp_path / "raw" / "cifar10.npz").exists()
    with pytest.raises(ConfigError, match=r"data.size: cifar10 images are 32x32, got 28; set data.size=32"):
        fetch_raw(DataConfig(flag="cifar10", source=str(tmp_path / "src"), raw_dir=str(tmp_path / "raw")))


def test_torchvision_download_path_uses_medgens_readers(tmp_path, monkeypatch):
    """Online, torchvision fetches the native files; the conversion is the offline code path."""
    import torchvision.datasets

    train, test = cifar_arrays()

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert download and train
            write_cifar10(root, *cifar_arrays())

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.delenv("MEDGEN_DATA_SOURCE", raising=False)
    cfg = DataConfig(flag="cifar10", size=32, check_counts=False, raw_dir=str(tmp_path / "raw"))
    raw, origin = fetch_raw(cfg)
    assert origin == "download" and np.array_equal(load_npz(raw, cfg).test.images, test[0])

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="download of fashionmnist through torchvision failed.*native files"):
        fetch_raw(DataConfig(flag="fashionmnist", check_counts=False, raw_dir=str(tmp_path / "raw")))


def test_cli_bad_native_file_is_one_line_and_writes_nothing(workdir):
    train, test = cifar_arrays()
    folder = write_cifar10(workdir / "cifar", train, test)
    whole = (folder / "data_batch_4").read_bytes()
    (folder / "data_batch_4").write_bytes(whole[:1000])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medgen.cli",
            "stage",
            "prepare",
            "-S",
            "data.flag=cifar10",
            "-S",
            "data.size=32",
            "-S",
            "data.check_counts=false",
            "-S",
            f"data.source={workdir / 'cifar'}",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("medgen: error:")]
    assert len(error_lines) == 1
    assert "data_batch_4: not a readable CIFAR-10 batch (truncated or corrupt" in error_lines[0]
    assert not list((workdir / "data").rglob("*.npz")) if (workdir / "data").exists() else True
    assert not (workdir / "metrics" / "prepare.json").exists()


# ------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashionmnist_round_trip_and_torchvision_layout(tmp_path):
    train, test = fashion_arrays()
    write_fashionmnist(tmp_path / "FashionMNIST" / "raw", train, test)
    arrays = native.read_fashionmnist(tmp_path)  # finds torchvision's FashionMNIST/raw/ below the folder
    assert np.array_equal(arrays["train_images"], train[0]) and np.array_equal(arrays["test_labels"], test[1])
    cfg = DataConfig(flag="fashionmnist", source=str(tmp_path), check_counts=False, raw_dir=str(tmp_path / "raw"))
    dataset = load_npz(fetch_raw(cfg)[0], cfg)
    # 6 images per class: 1/12 of them rounds to 0, so each class gives its minimum of one
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [50, 10, 20]
    assert dataset.image_shape == (1, 28, 28) and dataset.class_names[9] == "Ankle boot"


def _rewrite(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload, mtime=0))


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[:100]),
            r"train-images-idx3-ubyte.gz: not a readable gzip file \(truncated",
        ),
        (
            lambda p: _rewrite(p, gzip.decompress(p.read_bytes())[:-7]),
            r"idx payload has 47033 bytes, its header \(60, 28, 28\) promises 47040",
        ),
        (
            lambda p: _rewrite(p, b"\x00\x00\x08\x01" + gzip.decompress(p.read_bytes())[4:]),
            r"not an idx ubyte file with 3 dimension",
        ),
    ],
)
def test_damaged_fashion_images(tmp_path, damage, message):
    folder = write_fashionmnist(tmp_path, *fashion_arrays())
    damage(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=message):
        native.read_fashionmnist(tmp_path)


def test_mislabelled_fashion_labels(tmp_path):
    (train_x, train_y), test = fashion_arrays()
    train_y = train_y.copy()
    train_y[3] = 12
    write_fashionmnist(tmp_path, (train_x, train_y), test)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: labels range 0\.\.12, expected 0\.\.9"):
        native.read_fashionmnist(tmp_path)
    write_fashionmnist(tmp_path, (train_x, train_y[:-1] % 10), test)
    with pytest.raises(DataError, match="59 labels for 60 images"):
        native.read_fashionmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing Fashion-MNIST file t10k-labels-idx1-ubyte.gz"):
        native.read_fashionmnist(tmp_path)
