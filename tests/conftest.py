"""Shared fixtures. Tests never touch the repository's own data/, metrics/ or mlruns/: each test runs in
its own temporary working directory with a copy of params.yaml and a pre-migrated MLflow database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medgen.config import SOURCE_ENV, Config
from medgen.params import load_config

ROOT = Path(__file__).resolve().parents[1]
_ENV_TO_CLEAR = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MEDGEN_OPTUNA_STORAGE",
    "MEDGEN_PARENT_RUN_ID",
    "MEDGEN_PROFILE",
)


def pytest_collection_modifyitems(config, items) -> None:
    """Files holding a `slow` test run first, the rest in collection order (a stable sort). `make test` gives whole
    files to its processes in this order (pytest-xdist --dist loadfile --no-loadscope-reorder): the longest start
    first and the short ones fill in at the end, instead of one process finishing a long file alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def real_npz() -> Path | None:
    """BreastMNIST for tests: $MEDGEN_DATA_SOURCE, else ../shared/data/breastmnist.npz beside the repo."""
    candidates = [os.environ.get(SOURCE_ENV, ""), str(ROOT.parent / "shared" / "data" / "breastmnist.npz")]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="session")
def breastmnist_npz() -> Path:
    path = real_npz()
    if path is None:
        message = f"real BreastMNIST not found: set ${SOURCE_ENV} or put it at ../shared/data/breastmnist.npz"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must never pass by skipping the real-data tests
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated MLflow sqlite database per session; tests copy it (schema migration takes seconds)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Path:
    """A clean working directory with params.yaml and a fresh MLflow store; environment isolated."""
    for name in _ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(mlflow_template, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def smoke_cfg(workdir: Path, breastmnist_npz: Path):
    """Factory: the smoke profile pointed at the real BreastMNIST, plus any `section.key=value`."""

    def make(*overrides: str) -> Config:
        return load_config(
            workdir / "params.yaml", profile="smoke", overrides=[f"data.source={breastmnist_npz}", *overrides]
        )

    return make


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (on a busy 2-core machine 2 threads ran 5-10x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
