"""Serving fixtures: stand-in models exported once per session (no MLflow), and one real
`bentoml serve` subprocess on a free 127.0.0.1 port shared by the HTTP tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from medgen import data
from medgen.config import load_config
from tests.conftest import ROOT
from tests.standins import save_classifier, save_generator


def export_standins(folder: Path, npz: Path) -> Path:
    """Stand-in classifier + generator -> <folder>/export/{classifier,generator}.{onnx,json} via the stage's
    own export_one (parity-checked on real BreastMNIST test images), without MLflow."""
    from medgen.stages import export

    cfg = load_config(ROOT / "params.yaml", profile="smoke", overrides=[
        f"export.classifier_checkpoint={folder / 'classifier.pt'}", f"export.generator_checkpoint={folder / 'generator.pt'}",
        f"export.augmented_checkpoint={folder / 'absent.pt'}", f"export.out_dir={folder / 'export'}"])
    real, _ = data.to_tensors(data.load_npz(npz, cfg.data).test)
    save_classifier(cfg.export.classifier_checkpoint, images=real[:64])
    save_generator(cfg.export.generator_checkpoint)
    for target in export.targets(cfg):
        export.export_one(target, cfg, real.numpy())
    return Path(cfg.export.out_dir)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory, breastmnist_npz: Path) -> Path:
    return export_standins(tmp_path_factory.mktemp("standins"), breastmnist_npz)


@pytest.fixture(scope="session")
def test_images(breastmnist_npz: Path):
    """Real BreastMNIST test split: uint8 (156, 28, 28), labels (156,)."""
    from medgen.config import DataConfig

    split = data.load_npz(breastmnist_npz, DataConfig()).test
    return split.images, split.labels


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_env(export_dir: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "MEDGEN_MODEL_DIR": str(export_dir), **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"service at {url} not ready after {timeout} s")


@pytest.fixture(scope="session")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Base URL of a real `bentoml serve serving.service:MedGen` on 127.0.0.1 (session-scoped)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    cmd = [sys.executable, "-m", "bentoml", "serve", "serving.service:MedGen", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(cmd, cwd=ROOT, env=serve_env(export_dir), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        os.killpg(process.pid, 15)  # the server and its worker processes, by our own group id
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
        log.close()
