"""`dvc repro` on a throw-away copy of the project: runs, is a no-op the second time, round-trips a remote."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from medgen.data import file_md5
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def sh(*args: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path, breastmnist_npz, mlflow_template):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / "mlruns").mkdir()
    shutil.copy(mlflow_template, repo / "mlruns" / "mlflow.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDGEN_"))}
    env["MEDGEN_DATA_SOURCE"] = str(breastmnist_npz)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}"  # `medgen` of this venv
    sh("git", "init", "-q", cwd=repo, env=env)
    sh("dvc", "init", "-q", cwd=repo, env=env)
    sh("dvc", "config", "core.analytics", "false", cwd=repo, env=env)
    return repo, env


# Only `prepare`: later stages train models (minutes on the full profile); each has its own integration test.
def test_repro_twice_is_a_noop_and_status_clean(project):
    repo, env = project
    first = sh("dvc", "repro", "prepare", cwd=repo, env=env)
    assert "Running stage 'prepare'" in first
    assert (repo / "metrics" / "prepare.json").exists()
    second = sh("dvc", "repro", "prepare", cwd=repo, env=env)
    assert "Running stage" not in second
    assert "up to date" in sh("dvc", "status", "prepare", cwd=repo, env=env)


def test_push_pull_round_trips_the_data(project, tmp_path):
    repo, env = project
    sh("dvc", "repro", "prepare", cwd=repo, env=env)
    raw = repo / "data" / "raw" / "breastmnist.npz"
    before = file_md5(raw)
    sh("dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"), cwd=repo, env=env)
    sh("dvc", "push", cwd=repo, env=env)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    sh("dvc", "pull", "prepare", cwd=repo, env=env)
    assert file_md5(raw) == before
    assert (repo / "data" / "prepared" / "breastmnist.npz").exists()
    assert "up to date" in sh("dvc", "status", "prepare", cwd=repo, env=env)
