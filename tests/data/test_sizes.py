"""MedMNIST+ sizes offline: MedMNIST's own file names (<flag>_<size>.npz) beside data.source, in a source
folder or dropped into raw_dir; a raw copy of another size is replaced, never silently used."""

from __future__ import annotations

import numpy as np
import pytest

from medgen.config import DataConfig
from medgen.data import fetch_raw, load_npz, medmnist_file_name, npz_image_shape
from medgen.errors import ConfigError, DataError
from tests.data.test_validation import make_arrays, write


@pytest.fixture(autouse=True)
def _no_env_source(monkeypatch):
    """`make test` points $MEDGEN_DATA_SOURCE at BreastMNIST; these tests name their sources themselves."""
    monkeypatch.delenv("MEDGEN_DATA_SOURCE", raising=False)


def breast(tmp_path, size: int, name: str | None = None, rgb: bool = False):
    arrays = make_arrays(n=(8, 4, 4), size=size)
    if rgb:
        arrays = {k: (np.repeat(v[..., None], 3, axis=3) if k.endswith("images") else v) for k, v in arrays.items()}
    return write(tmp_path, arrays, name or medmnist_file_name("breastmnist", size))


def cfg_for(tmp_path, size: int, source: str = "", **extra) -> DataConfig:
    return DataConfig(
        flag="breastmnist",
        size=size,
        source=source,
        check_counts=False,
        download=False,
        raw_dir=str(tmp_path / "raw"),
        **extra,
    )


def test_medmnist_file_names():
    assert medmnist_file_name("breastmnist", 28) == "breastmnist.npz"
    assert medmnist_file_name("pathmnist", 224) == "pathmnist_224.npz"


def test_sibling_of_the_source_file_serves_another_size(tmp_path):
    source = breast(tmp_path, 28)
    breast(tmp_path, 64)
    raw, origin = fetch_raw(cfg_for(tmp_path, 64, str(source)))
    assert origin == "local" and npz_image_shape(raw) == (8, 64, 64)
    assert load_npz(raw, cfg_for(tmp_path, 64)).image_shape == (1, 64, 64)


def test_source_folder_and_raw_dir_drop_in(tmp_path):
    breast(tmp_path, 128)
    raw, _ = fetch_raw(cfg_for(tmp_path, 128, str(tmp_path)))
    assert npz_image_shape(raw) == (8, 128, 128)
    with pytest.raises(DataError, match="has no breastmnist_224.npz"):
        fetch_raw(cfg_for(tmp_path, 224, str(tmp_path)))
    breast(tmp_path / "raw", 224)  # MedMNIST's own download dropped into raw_dir
    raw, origin = fetch_raw(cfg_for(tmp_path, 224))
    assert origin == "raw_dir" and npz_image_shape(raw) == (8, 224, 224)


def test_raw_copy_of_another_size_is_replaced_or_named(tmp_path):
    breast(tmp_path, 28)
    breast(tmp_path, 64)
    fetch_raw(cfg_for(tmp_path, 28, str(tmp_path / "breastmnist.npz")))
    raw, origin = fetch_raw(cfg_for(tmp_path, 28))  # the same size: reused as is
    assert origin == "raw" and npz_image_shape(raw) == (8, 28, 28)
    raw, origin = fetch_raw(cfg_for(tmp_path, 64, str(tmp_path / "breastmnist.npz")))
    assert origin == "local" and npz_image_shape(raw) == (8, 64, 64)
    with pytest.raises(DataError, match="raw/breastmnist.npz holds 64 px images, data.size is 128; no local source"):
        fetch_raw(cfg_for(tmp_path, 128))


def test_missing_sibling_is_named(tmp_path):
    source = breast(tmp_path, 28)
    with pytest.raises(DataError, match="holds 28 px images and there is no breastmnist_64.npz beside it"):
        fetch_raw(cfg_for(tmp_path, 64, str(source)))


def test_sizes_are_checked_per_flag(tmp_path):
    with pytest.raises(ConfigError, match="MedMNIST ships breastmnist at 28, 64, 128, 224 px, got 32"):
        load_npz(breast(tmp_path, 32, "x.npz"), cfg_for(tmp_path, 32))
    for bad in (24, 30, 228):
        with pytest.raises(ConfigError, match="data.size: must be a side in 28..224 divisible by 4"):
            DataConfig(size=bad)
    custom = DataConfig(flag="rgb32", n_classes=2, size=32)  # a custom npz may use any such side
    assert load_npz(breast(tmp_path, 32, "rgb.npz", rgb=True), custom).image_shape == (3, 32, 32)


def test_metadata_entry_round_trips_and_bad_metadata_is_named(tmp_path):
    from medgen.data import save_npz

    cfg = cfg_for(tmp_path, 28)
    dataset = load_npz(breast(tmp_path, 28), cfg)
    assert dataset.metadata == {}
    save_npz(dataset.__class__(**{**vars(dataset), "metadata": {"note": "carved"}}), tmp_path / "with.npz")
    assert load_npz(tmp_path / "with.npz", cfg).metadata == {"note": "carved"}
    arrays = make_arrays(n=(8, 4, 4))
    arrays["metadata"] = np.array("not json")
    with pytest.raises(DataError, match="'metadata' must be a JSON object string"):
        load_npz(write(tmp_path, arrays, "bad.npz"), cfg)
