"""Serving fixtures: stand-in models exported once per session (no MLflow), real `bentoml serve` subprocesses
on free 127.0.0.1 ports (one shared by the HTTP tests, others per module), and a helper for servers that
must refuse to start."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from medgen import data, manifest, model_card
from medgen.cli import serve_command
from medgen.params import load_config
from tests.conftest import ROOT
from tests.standins import save_classifier, save_generator


def export_standins(folder: Path, npz: Path, card: bool = False, write_generator=save_generator) -> Path:
    """Stand-in classifier + generator -> <folder>/export/{classifier,generator}.{onnx,json} via the stage's
    own export_one (parity-checked on real BreastMNIST test images), without MLflow; with `card`, also the
    model_card.{json,md} the stage writes (medgen.model_card.write). `write_generator(path)` saves the
    generator checkpoint (default: the stand-in GAN; tests.standins.save_denoiser for a diffusion model)."""
    from medgen.stages import export

    cfg = load_config(
        ROOT / "params.yaml",
        profile="smoke",
        overrides=[
            f"export.classifier_checkpoint={folder / 'classifier.pt'}",
            f"export.generator_checkpoint={folder / 'generator.pt'}",
            f"export.augmented_checkpoint={folder / 'absent.pt'}",
            f"export.out_dir={folder / 'export'}",
        ],
    )
    real, _ = data.to_tensors(data.load_npz(npz, cfg.data).test)
    save_classifier(cfg.export.classifier_checkpoint, images=real[:64])
    write_generator(cfg.export.generator_checkpoint)
    for target in export.targets(cfg):
        export.export_one(target, cfg, real.numpy())
    if card:
        model_card.write(cfg, cfg.export.out_dir, export.targets(cfg), data.load_npz(npz, cfg.data))
    manifest.write(cfg, cfg.export.out_dir)  # as the stage does last
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
    """The environment of a test server: these models, no keys, no rate limit unless `extra` sets them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDGEN_") or k == "MEDGEN_DATA_SOURCE"}
    # Tests send bursts from one address: no rate limit, room for 64 requests at once and no wait budget (a loaded
    # CI box would refuse some), unless `extra` says
    env.update(
        {
            "MEDGEN_MODEL_DIR": str(export_dir),
            "MEDGEN_RATE_PER_S": "0",
            "MEDGEN_MAX_INFLIGHT": "64",
            "MEDGEN_MAX_WAIT_MS": "600000",
            **extra,
        }
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def burst_of_503s(url: str, body: dict, reason: str, workers: int, requests: int = 24) -> list[int]:
    """POST `requests` copies of the JSON `body` to /classify from `workers` threads at once: every answer must be a
    200 or a 503 with `Retry-After: 1` and `reason` in its error, and both must occur. The status codes."""
    import httpx

    def post(_):
        return httpx.post(f"{url}/classify", json=body, timeout=60)

    with ThreadPoolExecutor(workers) as pool:
        responses = list(pool.map(post, range(requests)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    for response in responses:
        if response.status_code == 503:
            assert response.headers["Retry-After"] == "1" and reason in response.json()["error"], response.text
    return codes


def serve_cmd(port: int, host: str = "127.0.0.1") -> list[str]:
    return serve_command(host, port, "--timeout-graceful-shutdown", "5")


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


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its workers too), SIGKILL after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running(export_dir: Path, folder: Path, **env: str) -> Iterator[Server]:
    """A real `bentoml serve serving.service:MedGen` on a free 127.0.0.1 port, stopped afterwards."""
    port, log = free_port(), folder / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            serve_cmd(port),
            cwd=ROOT,
            env=serve_env(export_dir, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = Server(f"http://127.0.0.1:{port}", log, process)
        try:
            wait_ready(server.url, process)
            yield server
        finally:
            stop(process)


def start_expecting_exit(
    export_dir: Path, host: str = "127.0.0.1", timeout: float = 60, **env: str
) -> tuple[int | None, str, float]:
    """(exit code, output, seconds) of a server that should refuse to start; None if it was still running."""
    t0 = time.monotonic()
    process = subprocess.Popen(
        serve_cmd(free_port(), host),
        cwd=ROOT,
        env=serve_env(export_dir, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output, time.monotonic() - t0
    except subprocess.TimeoutExpired:
        stop(process)
        return None, process.communicate()[0], time.monotonic() - t0


@pytest.fixture(scope="session")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Base URL of a real `bentoml serve serving.service:MedGen` on 127.0.0.1 (session-scoped; no keys,
    no rate limit: the limits have their own servers in test_security.py)."""
    with running(export_dir, tmp_path_factory.mktemp("serve")) as live:
        yield live.url
