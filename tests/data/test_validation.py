"""Schema and validation of MedMNIST-layout npz files, on small hand-made files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medgen.config import DataConfig
from medgen.data import fetch_raw, load_npz
from medgen.errors import DataError

CUSTOM = DataConfig(flag="tiny", n_classes=2)


def make_arrays(n=(6, 4, 4), size=28, label_shape="flat", n_classes=2, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        labels = np.arange(count) % n_classes
        arrays[f"{split}_labels"] = labels[:, None] if label_shape == "column" else labels
    return arrays


def write(tmp_path: Path, arrays: dict, name="tiny.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("label_shape", ["flat", "column"])
def test_both_label_shapes_load_as_flat_int64(tmp_path, label_shape):
    dataset = load_npz(write(tmp_path, make_arrays(label_shape=label_shape)), CUSTOM)
    assert dataset.train.labels.shape == (6,)
    assert dataset.train.labels.dtype == np.int64
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [6, 4, 4]


def test_truncated_file(tmp_path):
    good = write(tmp_path, make_arrays())
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_npz(cut, CUSTOM)


def test_missing_key(tmp_path):
    arrays = make_arrays()
    del arrays["val_labels"]
    with pytest.raises(DataError, match="missing key.*val_labels"):
        load_npz(write(tmp_path, arrays), CUSTOM)


def test_wrong_image_dtype(tmp_path):
    arrays = make_arrays()
    arrays["train_images"] = arrays["train_images"].astype(np.float32)
    with pytest.raises(DataError, match="train_images has dtype float32, expected uint8"):
        load_npz(write(tmp_path, arrays), CUSTOM)


def test_wrong_image_size(tmp_path):
    with pytest.raises(DataError, match=r"shape \(6, 32, 32\)"):
        load_npz(write(tmp_path, make_arrays(size=32)), CUSTOM)


def test_label_out_of_range(tmp_path):
    arrays = make_arrays()
    arrays["test_labels"][0] = 2
    with pytest.raises(DataError, match=r"test_labels range 0\.\.2, expected 0\.\.1"):
        load_npz(write(tmp_path, arrays), CUSTOM)


def test_negative_label(tmp_path):
    arrays = make_arrays()
    arrays["val_labels"][1] = -1
    with pytest.raises(DataError, match="val_labels range -1"):
        load_npz(write(tmp_path, arrays), CUSTOM)


def test_label_matrix_rejected(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"] = np.zeros((6, 3), dtype=np.int64)
    with pytest.raises(DataError, match=r"train_labels has shape \(6, 3\)"):
        load_npz(write(tmp_path, arrays), CUSTOM)


def test_image_label_count_mismatch(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    with pytest.raises(DataError, match="train has 6 images but 5 labels"):
        load_npz(write(tmp_path, arrays), CUSTOM)


def test_known_flag_checks_split_sizes(tmp_path):
    with pytest.raises(DataError, match="train has 6 samples, expected 546"):
        load_npz(write(tmp_path, make_arrays()), DataConfig(flag="breastmnist"))


def test_unknown_flag_needs_n_classes(tmp_path):
    with pytest.raises(DataError, match="set data.n_classes"):
        load_npz(write(tmp_path, make_arrays()), DataConfig(flag="tiny"))


def test_multilabel_flag_rejected(tmp_path):
    with pytest.raises(DataError, match="multi-label"):
        load_npz(write(tmp_path, make_arrays()), DataConfig(flag="chestmnist"))


def test_bad_source_leaves_no_raw_file(tmp_path):
    arrays = make_arrays()
    arrays["train_images"] = arrays["train_images"].astype(np.int16)
    source = write(tmp_path, arrays, "bad.npz")
    cfg = DataConfig(flag="tiny", n_classes=2, source=str(source), raw_dir=str(tmp_path / "raw"))
    with pytest.raises(DataError):
        fetch_raw(cfg)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_offline_without_source_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MEDGEN_DATA_SOURCE", raising=False)
    cfg = DataConfig(flag="tiny", n_classes=2, download=False, raw_dir=str(tmp_path / "raw"))
    with pytest.raises(DataError, match="data.download is false"):
        fetch_raw(cfg)


def test_cli_reports_truncated_file_in_one_line_and_writes_nothing(workdir):
    good = write(workdir, make_arrays())
    cut = workdir / "cut.npz"
    cut.write_bytes(good.read_bytes()[:300])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medgen.cli",
            "stage",
            "prepare",
            "-S",
            "data.flag=tiny",
            "-S",
            "data.n_classes=2",
            "-S",
            f"data.source={cut}",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("medgen: error:")]
    assert len(error_lines) == 1 and "truncated or corrupt" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not (workdir / "data").exists() or not list((workdir / "data").rglob("*.npz"))
    assert not (workdir / "metrics" / "prepare.json").exists()


def test_tensor_round_trip_is_exact():
    from medgen.data import Split, to_tensors, to_uint8

    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28).astype(np.uint8)
    x, y = to_tensors(Split(images, np.array([0, 1])))
    assert tuple(x.shape) == (2, 1, 28, 28) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert np.array_equal(to_uint8(x), images)
    assert y.tolist() == [0, 1]
