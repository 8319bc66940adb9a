"""Admission control at the edge of the ASGI stack: a refused request costs as little as it can.

`Admission` is a raw ASGI middleware (no Starlette Request, no routing, no body read, no logging per request),
registered with BentoML's public hook `MedGen.add_asgi_middleware`. For the guarded routes (GUARDED) it runs the
worker's Guard (API key -> 401, token bucket -> 429, in-flight bound -> 503) on the request head alone and answers
a refusal itself with precomputed headers; an admitted request goes on with its caller's name in the scope
(SCOPE_KEY), so the handler does not check twice. Every other path passes through untouched.

Where it sits: BentoML puts service middlewares below its own metrics, tracing and timeout middlewares and above
routing and the mounted FastAPI app, so a refusal here skips routing, the FastAPI app, request parsing and the
handler (measured CPU per refusal: docs/serving.md, back-pressure). uvicorn's HTTP parsing and BentoML's own
middlewares still run; a refusal path below those needs a proxy in front of the service.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.guard import Guard, Refusal, shared_guard

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = "medgen.caller"  # set on an admitted request's scope: the Guard's name for its caller
# (method, path) -> is it a compute request (bounded by max_inflight); the keyed endpoints of serving/service.py
# (FastAPI adds no HEAD to GET routes: a HEAD goes on to routing and gets its 405 there, as before this middleware)
GUARDED: dict[tuple[str, str], bool] = {
    ("POST", "/classify"): True,
    ("POST", "/generate"): True,
    ("GET", "/metadata"): False,
    ("GET", "/model-card"): False,
}


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (name in lower case, as ASGI servers give them), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def refusal_message(refusal: Refusal) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(headers, body) of a refusal: the same {"error", "status"} JSON as every other 4xx/5xx of the service."""
    body = json.dumps(
        {"error": refusal.reason, "status": refusal.status}, ensure_ascii=False, separators=(",", ":")
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers.items()]
    return headers, body


class Admission:
    """ASGI middleware: Guard.check() on the head of a guarded request; refusals answered here, at once."""

    def __init__(self, app: ASGIApp, guard: Callable[[], Guard] = shared_guard) -> None:
        self.app, self._guard = app, guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        compute = GUARDED.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if compute is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        caller, refusal = self._guard().check(
            header(scope, b"authorization"), client[0] if client else "unknown", compute
        )
        if refusal is None:
            await self.app({**scope, SCOPE_KEY: caller}, receive, send)
            return
        headers, body = refusal_message(refusal)
        await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
