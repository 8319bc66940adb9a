"""The in-flight bound over real HTTP: a burst beyond it gets 503 + Retry-After (never another error), and a
slow upload does not hold a slot (a slot is taken only once the body has arrived)."""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np
import pytest

from tests.serving.conftest import burst_of_503s, running


@pytest.fixture(scope="module")
def one_slot(export_dir, tmp_path_factory):
    with running(export_dir, tmp_path_factory.mktemp("one-slot"), MEDGEN_MAX_INFLIGHT="1") as live:
        yield live.url


def test_burst_beyond_the_inflight_bound_gets_503_with_retry_after(one_slot):
    batch = {"images": np.zeros((256, 28, 28), dtype=int).tolist()}  # big enough to overlap
    burst_of_503s(one_slot, batch, "saturated", workers=12)
    assert httpx.get(f"{one_slot}/healthz", timeout=10).status_code == 200


def test_a_slow_upload_does_not_hold_the_slot(one_slot):
    host, port = one_slot.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100000\r\n\r\n{"images": ['
        )  # and then nothing for a while
        time.sleep(0.5)
        quick = httpx.post(
            f"{one_slot}/classify", json={"images": np.zeros((1, 28, 28), dtype=int).tolist()}, timeout=30
        )
        assert quick.status_code == 200, quick.text
