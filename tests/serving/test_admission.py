"""serving.admission: refusals answered at the edge of the ASGI stack, before routing and the body.

The middleware itself on a fake ASGI app (what passes through, what is answered, what the handler is told), then
against a real `bentoml serve`: a refusal does not wait for the body, and the connection stays usable after it."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import numpy as np
import pytest

from serving.admission import GUARDED, SCOPE_KEY, Admission
from serving.guard import Guard
from serving.settings import Settings, key_id
from tests.serving.conftest import running

KEY = "medgen-test-key-adm-5b1c9e2d7f30"


def scope(method: str, path: str, authorization: str | None = None) -> dict:
    headers = [(b"host", b"x"), (b"content-type", b"image/png")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    return {"type": "http", "method": method, "path": path, "headers": headers, "client": ("10.0.0.7", 5555)}


def call(middleware_scope: dict, guard: Guard) -> tuple[list[dict], list[dict]]:
    """(scopes the wrapped app saw, messages sent to the client); the body is never offered to the middleware."""
    seen, sent = [], []

    async def app(inner, receive, send):
        seen.append(inner)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive():
        raise AssertionError("the middleware read the request body")

    async def send(message):
        sent.append(message)

    asyncio.run(Admission(app, guard=lambda: guard)(middleware_scope, receive, send))
    return seen, sent


def keyed_guard(**settings) -> Guard:
    return Guard(Settings(api_keys=(KEY,), **settings))


def test_refusal_is_answered_without_the_app_and_in_the_usual_shape():
    guard = keyed_guard()
    for path, method in (("/classify", "POST"), ("/generate", "POST"), ("/metadata", "GET"), ("/model-card", "GET")):
        seen, sent = call(scope(method, path), guard)
        assert seen == [] and [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 401
        headers = dict(sent[0]["headers"])
        body = sent[1]["body"]
        assert json.loads(body) == {"error": "missing API key: send Authorization: Bearer <key>", "status": 401}
        assert headers[b"content-type"] == b"application/json" and int(headers[b"content-length"]) == len(body)
        assert headers[b"www-authenticate"] == b'Bearer realm="medgen"'
    assert guard.counts["401"] == 4 and guard.counts["admitted"] == 0


def test_rate_limit_and_saturation_refusals_carry_retry_after():
    guard = keyed_guard(rate_per_s=1.0, rate_burst=1, max_inflight=1)
    seen, _ = call(scope("POST", "/classify", f"Bearer {KEY}"), guard)
    assert len(seen) == 1
    _, limited = call(scope("POST", "/classify", f"Bearer {KEY}"), guard)
    assert limited[0]["status"] == 429 and dict(limited[0]["headers"])[b"retry-after"] == b"1"
    guard = keyed_guard(rate_per_s=0.0, max_inflight=1)
    with guard.slot("key:other"):  # every slot taken: a compute request is refused, a metadata request is not
        _, busy = call(scope("POST", "/classify", f"Bearer {KEY}"), guard)
        seen, _ = call(scope("GET", "/metadata", f"Bearer {KEY}"), guard)
    assert busy[0]["status"] == 503 and dict(busy[0]["headers"])[b"retry-after"] == b"1" and len(seen) == 1
    assert "saturated" in json.loads(busy[1]["body"])["error"]


def test_admitted_requests_carry_their_caller_and_other_routes_pass_untouched():
    guard = keyed_guard()
    original = scope("POST", "/classify", f"Bearer {KEY}")
    seen, sent = call(original, guard)
    assert seen[0][SCOPE_KEY] == f"key:{key_id(KEY)}" and SCOPE_KEY not in original and sent[0]["status"] == 200
    for method, path in (
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/classify"),
        ("POST", "/metadata"),
        ("POST", "/classify/"),
        ("HEAD", "/metadata"),
        ("GET", "/docs.json"),
    ):
        assert (method, path) not in GUARDED
        seen, _ = call(scope(method, path), guard)  # no key, yet passed on: the app answers (405/404/200)
        assert len(seen) == 1 and SCOPE_KEY not in seen[0]
    lifespan = {"type": "lifespan"}
    assert call(lifespan, guard)[0] == [lifespan]
    assert guard.counts["401"] == 0


@pytest.fixture(scope="module")
def keyed_server(export_dir, tmp_path_factory):
    with running(export_dir, tmp_path_factory.mktemp("admission"), MEDGEN_API_KEYS=KEY) as live:
        yield live


def head(port: int, key: str, length: int) -> bytes:
    return (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """One HTTP/1.1 response (status, JSON body) read from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (line.partition(":") for line in lines[1:]) if k.lower() == "content-length")
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body[:length])


def test_a_refusal_does_not_wait_for_the_body_and_the_connection_stays_usable(keyed_server):
    host, port = keyed_server.url.removeprefix("http://").split(":")
    good = json.dumps({"images": np.zeros((1, 28, 28), dtype=int).tolist()}).encode()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head(int(port), "wrong-key-but-long-enough", len(good)))  # the head only: no body yet
        status, body = read_response(sock)
        assert status == 401 and "wrong API key" in body["error"]
        sock.sendall(good)  # the body the refused request declared, then a good request on the same connection
        sock.sendall(head(int(port), KEY, len(good)) + good)
        status, body = read_response(sock)
        assert status == 200 and len(body["predictions"]) == 1, body
        for _ in range(3):  # refused with its body sent, then admitted, alternately: keep-alive survives both
            sock.sendall(head(int(port), "wrong-key-but-long-enough", len(good)) + good)
            assert read_response(sock)[0] == 401
            sock.sendall(head(int(port), KEY, len(good)) + good)
            assert read_response(sock)[0] == 200


def test_unguarded_routes_answer_as_before_with_keys_set(keyed_server):
    assert httpx.get(f"{keyed_server.url}/healthz", timeout=10).status_code == 200
    wrong_method = httpx.get(f"{keyed_server.url}/classify", timeout=10)  # routing answers, not the key check
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
