"""`make container-check` in the test suite: the serve image is built with a real engine, run as
docs/serving.md prints, and checked end to end (scripts/container_check.py). It skips only where no engine
can be used (.ci/run installs podman, runc and debootstrap as root, so CI runs it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.serving.conftest import export_standins

sys.path.insert(0, str(ROOT / "scripts"))
import container_check  # noqa: E402


@pytest.mark.integration
@pytest.mark.slow
def test_container_check_passes(tmp_path, breastmnist_npz):
    if container_check.find_engine() is None:
        pytest.skip("no container engine (apt-get install -y podman runc debootstrap; .ci/run does it as root)")
    models = export_standins(tmp_path / "models", breastmnist_npz)
    report_path = tmp_path / "container_check.json"
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "scripts/container_check.py", "--model-dir", str(models), "--out", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    print(out.stdout, f"container check took {time.monotonic() - t0:.0f} s")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    report = json.loads(report_path.read_text())
    image, checks = report["image"], report["checks"]
    assert report["misses"] == [] and image["size_mb"] <= 700
    assert "bentoml" in image["packages"] and "onnxruntime" in image["packages"]
    assert not any(p.startswith("torch") for p in image["packages"])
    assert checks["max_abs_diff"] <= 1e-5 and checks["images"] == 64
    assert checks["stop_seconds"] < 10 and checks["without_keys_exit"] == 1
