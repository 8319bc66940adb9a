"""Corrupt files a stage meets: one line naming the file, exit 1, previous outputs byte-identical."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from medgen import stages
from medgen.params import load_config

from .conftest import assert_one_line_error, medgen, medgen_here, snapshot


def corrupt_zlib_member(src: Path, dst: Path) -> Path:
    """A copy of an npz whose first compressed member has a damaged deflate stream (the zip index is fine)."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as archive:
        info = next(i for i in archive.infolist() if i.compress_type == zipfile.ZIP_DEFLATED)
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start : start + 64] = bytes(64)  # zero the start of the deflate stream
    dst.write_bytes(bytes(raw))
    return dst


@pytest.fixture
def prepared(fault_dir):
    cfg = load_config("params.yaml", profile="smoke")
    stages.get("prepare")(cfg)
    return cfg


@pytest.fixture
def compressed_npz(breastmnist_npz, tmp_path) -> Path:
    """BreastMNIST re-saved compressed (the medmnist file may be stored), then damaged."""
    with np.load(breastmnist_npz) as archive:
        arrays = {k: archive[k] for k in archive.files}
    good = tmp_path / "good.npz"
    np.savez_compressed(good, **arrays)
    return corrupt_zlib_member(good, tmp_path / "corrupt.npz")


def test_corrupt_zlib_stream_in_the_data_source(fault_dir, compressed_npz, monkeypatch, capsys):
    monkeypatch.setenv("MEDGEN_DATA_SOURCE", str(compressed_npz))
    result = medgen_here(capsys, "stage", "prepare", "--profile", "smoke")
    assert_one_line_error(result, "corrupt.npz: not a readable npz (truncated or corrupt: Error -3 while decompressing")
    assert not (fault_dir / "data/prepared").exists() or not any((fault_dir / "data/prepared").iterdir())
    assert not (fault_dir / "data/raw/breastmnist.npz").exists()


def test_corrupt_prepared_file_fails_the_next_stage_before_training(fault_dir, prepared, capsys):
    before = snapshot(fault_dir / "data")
    prepared_path = fault_dir / "data/prepared/breastmnist.npz"
    corrupt_zlib_member(prepared_path, prepared_path)
    damaged = snapshot(fault_dir / "data")
    result = medgen_here(capsys, "stage", "classify", "--profile", "smoke")
    assert_one_line_error(result, "breastmnist.npz: not a readable npz", "stage classify stopped")
    assert snapshot(fault_dir / "data") == damaged != before
    assert not (fault_dir / "models").exists() and not (fault_dir / "metrics/classify.json").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_tracking_database(fault_dir, prepared, damage, capsys):
    db = fault_dir / "mlruns/mlflow.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a database\n" * 300)
    before = snapshot(fault_dir / "data", fault_dir / "metrics", fault_dir / "plots")
    result = medgen(fault_dir, "stage", "prepare")  # a fresh process: this one has the store open already
    assert_one_line_error(
        result,
        "mlflow.db: the MLflow tracking store is not a readable SQLite database",
        "move it away to start a fresh store",
        "stage prepare stopped",
    )
    assert snapshot(fault_dir / "data", fault_dir / "metrics", fault_dir / "plots") == before


def test_corrupt_study_database(fault_dir, prepared, capsys):
    (fault_dir / "mlruns/optuna.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 5000)
    result = medgen_here(capsys, "stage", "classify", "--profile", "smoke")
    assert_one_line_error(
        result, "optuna.db: the Optuna storage is not a readable SQLite database", "stage classify stopped"
    )
    assert not (fault_dir / "models").exists()


def _truncated_checkpoint(path: Path) -> Path:
    """The first 40% of a real classifier checkpoint (what a full disk or a killed copy leaves)."""
    from medgen.models.classifier import ResNetClassifier
    from medgen.training import save_model

    full = save_model(
        path.with_suffix(".full"),
        ResNetClassifier(2, stem="pool"),
        {"n_classes": 2, "stem": "pool"},
        config={"hparams": {"lr": 1e-3}},
        metrics={},
    )
    data = full.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * 0.4)])
    full.unlink()
    return path


def test_truncated_checkpoint_given_to_export(fault_dir, prepared, capsys):
    _truncated_checkpoint(fault_dir / "models/classify/best.pt")
    (fault_dir / "models/export").mkdir(parents=True)
    (fault_dir / "models/export/classifier.onnx").write_bytes(b"previous export")
    before = snapshot(fault_dir / "models/export")
    result = medgen_here(capsys, "stage", "export", "--profile", "smoke")
    assert_one_line_error(result, "best.pt: not a readable checkpoint (truncated or corrupt", "stage export stopped")
    assert snapshot(fault_dir / "models/export") == before


def test_truncated_checkpoint_given_to_augment(fault_dir, prepared, capsys):
    _truncated_checkpoint(fault_dir / "models/classify/best.pt")
    result = medgen_here(capsys, "stage", "augment", "--profile", "smoke")
    assert_one_line_error(result, "best.pt: not a readable checkpoint (truncated or corrupt", "stage augment stopped")
    assert not (fault_dir / "models/augment").exists() or not any((fault_dir / "models/augment").glob("*.pt"))


def test_truncated_synthetic_samples_given_to_augment(fault_dir, prepared, capsys):
    from medgen.models.classifier import ResNetClassifier
    from medgen.training import save_model

    hparams = {"lr": 1e-3, "weight_decay": 1e-4, "aug_strength": 1.0}
    save_model(
        fault_dir / "models/classify/best.pt",
        ResNetClassifier(2, stem="pool"),
        {"n_classes": 2, "stem": "pool"},
        config={"hparams": hparams},
        metrics={},
    )
    samples = fault_dir / "data/synthetic/breastmnist/samples.npz"
    samples.parent.mkdir(parents=True)
    np.savez_compressed(samples, images=np.zeros((40, 28, 28), np.uint8), labels=np.arange(40) % 2)
    samples.write_bytes(samples.read_bytes()[:300])
    result = medgen_here(capsys, "stage", "augment", "--profile", "smoke")
    assert_one_line_error(result, "samples.npz: not a readable npz", "stage augment stopped")
