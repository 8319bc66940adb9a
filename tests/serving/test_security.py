"""Who may call, how much, and proof of what is served, against real `bentoml serve` processes:
keys (none / wrong / right), open probes, a burst over the rate limit (429 + Retry-After, service still
healthy), keys never in the logs, and a service that refuses to start (one line naming the file, exit 1,
within 30 s) on a tampered, missing or unlisted file, a public bind without keys or a bad setting."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from medgen import manifest
from medgen.params import load_config
from serving.settings import Settings, key_id
from serving.startup import check_bind, is_loopback
from tests.conftest import ROOT
from tests.serving.conftest import free_port, running, serve_env, start_expecting_exit, stop, wait_ready

KEY_A = "medgen-test-key-A-4f9c2b7e1d0a"  # rate-limit test only
KEY_B = "medgen-test-key-B-8e3d6a5c2f1b"
FILE_KEY = "medgen-test-key-F-0a9b8c7d6e5f"  # from MEDGEN_API_KEYS_FILE
GOOD = {"images": np.zeros((1, 28, 28), dtype=int).tolist()}
PROTECTED = [
    ("POST", "/classify", GOOD),
    ("POST", "/generate", {"label": 0, "n": 1, "seed": 0}),
    ("GET", "/metadata", None),
    ("GET", "/model-card", None),
]


@pytest.fixture(scope="module")
def keyed(export_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("keyed")
    keys_file = folder / "keys"
    keys_file.write_text(f"# one key a line\n{FILE_KEY}\n")
    with running(
        export_dir,
        folder,
        MEDGEN_API_KEYS=f"{KEY_A},{KEY_B}",
        MEDGEN_API_KEYS_FILE=str(keys_file),
        MEDGEN_RATE_PER_S="2",
        MEDGEN_RATE_BURST="10",
    ) as live:
        yield live


def call(url: str, method: str, path: str, body, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("method,path,body", PROTECTED, ids=[p[1] for p in PROTECTED])
def test_no_key_and_wrong_key_are_401_right_key_passes(keyed, method, path, body):
    for key, challenge in ((None, 'Bearer realm="medgen"'), ("wrong-key-0123456789", 'error="invalid_token"')):
        refused = call(keyed.url, method, path, body, key)
        assert refused.status_code == 401, refused.text
        assert "API key" in refused.json()["error"] and challenge in refused.headers["WWW-Authenticate"]
    admitted = call(keyed.url, method, path, body, KEY_B)
    assert admitted.status_code == (404 if path == "/model-card" else 200), admitted.text
    if path == "/model-card":  # no card exported: a JSON reason, after the key was accepted
        assert "no model card" in admitted.json()["error"]
    assert call(keyed.url, method, path, body, FILE_KEY).status_code == admitted.status_code


def test_probes_stay_open(keyed):
    for probe in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(f"{keyed.url}{probe}", timeout=10).status_code == 200


def test_burst_over_the_rate_limit_gets_429_with_retry_after(keyed):
    """30 requests at once with one key: the bucket (10 tokens, 2/s) admits its 10 plus what refills while
    the burst lasts; the rest are 429 with a Retry-After, another key is unaffected, the service stays healthy."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(lambda _: call(keyed.url, "POST", "/classify", GOOD, KEY_A), range(30)))
    elapsed = time.monotonic() - t0
    codes = [r.status_code for r in statuses]
    assert set(codes) <= {200, 429}, codes
    assert 10 <= codes.count(200) <= 10 + 2 * elapsed + 1 and codes.count(429) >= 1, (codes, elapsed)
    for response in statuses:
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1 and "rate limit" in response.json()["error"]
    assert call(keyed.url, "POST", "/classify", GOOD, FILE_KEY).status_code == 200  # buckets are per key
    assert httpx.get(f"{keyed.url}/healthz", timeout=10).status_code == 200
    time.sleep(1.1)  # two tokens back
    assert call(keyed.url, "POST", "/classify", GOOD, KEY_A).status_code == 200


def test_keys_never_appear_in_logs(keyed):
    call(keyed.url, "GET", "/metadata", None, "wrong-key-0123456789")
    call(keyed.url, "GET", "/metadata", None, KEY_B)
    time.sleep(0.5)
    log = keyed.log_text()
    for key in (KEY_A, KEY_B, FILE_KEY):
        assert key not in log
    assert f"key:{key_id(KEY_B)}" in log  # callers are told apart by a short hash
    assert "refused addr:127.0.0.1: 401" in log


def tampered_copy(export_dir: Path, folder: Path) -> Path:
    copy = folder / "export"
    shutil.copytree(export_dir, copy)
    return copy


def assert_refused(code, output: str, seconds: float, names: str) -> None:
    assert code not in (0, None), output[-2000:]
    assert seconds < 30
    errors = [line for line in output.splitlines() if line.startswith("medgen: error:")]
    assert len(errors) == 1 and names in errors[0], output[-2000:]
    assert "Traceback" not in output


def test_a_model_file_with_one_byte_changed_is_refused_at_start(export_dir, tmp_path):
    copy = tampered_copy(export_dir, tmp_path)
    data = bytearray((copy / "classifier.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "classifier.onnx").write_bytes(bytes(data))
    code, output, seconds = start_expecting_exit(copy)
    assert_refused(code, output, seconds, f"{copy / 'classifier.onnx'}: sha256")


@pytest.mark.parametrize(
    "change,names",
    [
        ("delete generator.onnx", "generator.onnx: missing"),
        ("unlisted model card", "model_card.json: not listed"),
        ("no manifest", "manifest.json: not found"),
    ],
)
def test_missing_or_unlisted_files_are_refused_at_start(export_dir, tmp_path, change, names):
    copy = tampered_copy(export_dir, tmp_path)
    if change == "delete generator.onnx":
        (copy / "generator.onnx").unlink()
    elif change == "unlisted model card":
        (copy / "model_card.json").write_text('{"model": "not from export"}')
    else:
        (copy / "manifest.json").unlink()
    assert_refused(*start_expecting_exit(copy), names)


def test_public_bind_without_keys_and_bad_settings_are_refused(export_dir, tmp_path):
    """The hook refuses before BentoML opens its socket, so nothing listens on 0.0.0.0 here."""
    assert_refused(*start_expecting_exit(export_dir, host="0.0.0.0"), "binding 0.0.0.0 without API keys")
    assert_refused(*start_expecting_exit(export_dir, MEDGEN_MAX_JSON_DEPTH="deep"), "MEDGEN_MAX_JSON_DEPTH")


def test_bind_rule():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback(None)
    assert check_bind(Settings(), "127.0.0.1") is None
    assert check_bind(Settings(api_keys=(KEY_A,)), "0.0.0.0") is None
    assert "WITHOUT API keys on 0.0.0.0" in check_bind(Settings(allow_anonymous=True), "0.0.0.0")


def test_medgen_serve_without_models_exits_within_30s_naming_the_file(tmp_path):
    """#16.4: the documented serve command with no exported models fails fast with one line."""
    missing = tmp_path / "no-export"
    env = {**serve_env(missing), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    t0 = time.monotonic()
    command = [sys.executable, "-m", "medgen.cli", "serve", "-S", f"export.out_dir={missing}", "--port", "0"]
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert_refused(out.returncode, out.stdout + out.stderr, time.monotonic() - t0, f"{missing}/manifest.json")


def test_sigterm_to_medgen_serve_stops_the_service_and_its_workers(export_dir, tmp_path):
    """`kill <pid of medgen serve>` leaves no server behind: medgen serve becomes bentoml serve (exec), so the signal
    reaches the process that stops its workers (a child process would have been orphaned, still answering)."""
    port = free_port()
    env = {**serve_env(export_dir), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    command = [sys.executable, "-m", "medgen.cli", "serve", "-S", f"export.out_dir={export_dir}", "--port", str(port)]
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        process.send_signal(signal.SIGTERM)  # to the PID `medgen serve` started as, not to its process group
        process.wait(timeout=30)
        with pytest.raises(httpx.TransportError):  # nothing answers on the port any more
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    finally:
        stop(process)
        with contextlib.suppress(ProcessLookupError):  # anything left in its session (an orphaned worker)
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_manifest_lists_every_file_the_service_checks(export_dir):
    """The writer (medgen.manifest) and the reader (serving.integrity) agree on the format."""
    from serving import integrity

    written = manifest.build(load_config(ROOT / "params.yaml"), export_dir)
    read = integrity.read_manifest(export_dir)
    assert set(read["files"]) == {"classifier.onnx", "classifier.json", "generator.onnx", "generator.json"}
    assert read["files"] == written["files"] and read["format"] == integrity.FORMAT
    for name, entry in read["files"].items():
        assert integrity.sha256((export_dir / name).read_bytes()) == entry["sha256"]
    assert len(read["code_commit"]) in (40, 7) or read["code_commit"] == "unknown"
