"""Who may call, how much, and how much at once: checked before a request body is read.

Order per request: API key (401), the caller's token bucket (429), the worker's in-flight bound (503).
Each refusal costs microseconds and answers at once with a Retry-After, so a saturated service says
"later" within milliseconds instead of letting every caller's latency grow without bound.

- Keys: `Authorization: Bearer <key>`; the presented key's sha256 is compared with every configured key's
  sha256 in constant time (hmac.compare_digest, all keys, no early exit). Logs name a key by key_id()
  (8 hex digits of its sha256), never by value.
- Fair use: one token bucket per caller (key id, or client address when anonymous), `rate_per_s` tokens a
  second up to `rate_burst`. Buckets are per worker: with W workers a caller gets up to W x the rate.
- Back-pressure: at most `max_inflight` requests of the compute endpoints parse and compute at once per worker.
  A request is refused at once (before its body is read) when the slots are full, and takes a slot only once
  its body has arrived: a slow upload never holds one.
- Wait budget: when the service gives the guard its load (`set_load`: the batcher's expected time for one more
  image, counting admitted requests not yet queued as one image each), a compute request that arrives while others
  are in progress is refused at once (503) if it would wait longer than the budget (`max_wait_ms`; 0 = 1.5 x the
  one-image time measured at start). The in-flight bound counts requests; the budget counts their cost.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from serving.bounded import BadInput
from serving.settings import Settings, from_env, key_id

log = logging.getLogger("medgen.serving")
MAX_CALLERS = 10_000  # buckets kept (least recently seen dropped): memory stays bounded under address churn
LOG_EVERY_S = 10.0  # a caller's refusals are logged at most this often
_PROCESS_GUARD: list[Guard] = []  # the worker's one Guard, shared by serving.admission and the service


@dataclass
class Refusal:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class TokenBucket:
    rate: float
    burst: int
    tokens: float = -1.0
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        if self.tokens < 0:  # a new caller starts with a full bucket
            self.tokens, self.stamp = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Guard:
    """The per-worker gate: `check()` refuses or admits a request; `slot()` bounds the work in progress."""

    def __init__(self, settings: Settings, clock=time.monotonic) -> None:
        self.settings, self.clock = settings, clock
        self._digests = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in settings.api_keys]
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._logged: dict[str, float] = {}
        self._seen: set[str] = set()
        self.inflight = 0
        self._load: Callable[[int], float] | None = None
        self.budget_ms = math.inf
        self.counts = {"admitted": 0, "401": 0, "429": 0, "503": 0}

    def caller(self, authorization: str | None, client: str) -> str | Refusal:
        """The caller's name (key:<id> or addr:<client>), or a 401 Refusal."""
        if not self._digests:
            return f"addr:{client}"
        scheme, _, token = (authorization or "").strip().partition(" ")
        challenge = 'Bearer realm="medgen"'
        if scheme.lower() != "bearer" or not token.strip():
            return Refusal(401, "missing API key: send Authorization: Bearer <key>", {"WWW-Authenticate": challenge})
        presented = hashlib.sha256(token.strip().encode()).digest()
        found = ""
        for digest, ident in self._digests:  # every key compared: the time does not say which one matched
            if hmac.compare_digest(presented, digest):
                found = ident
        if not found:
            return Refusal(401, "wrong API key", {"WWW-Authenticate": f'{challenge}, error="invalid_token"'})
        return f"key:{found}"

    def _bucket(self, caller: str) -> TokenBucket:
        bucket = self._buckets.pop(caller, None) or TokenBucket(self.settings.rate_per_s, self.settings.rate_burst)
        self._buckets[caller] = bucket  # most recently seen last
        if len(self._buckets) > MAX_CALLERS:
            self._buckets.popitem(last=False)
        return bucket

    def check(self, authorization: str | None, client: str, compute: bool) -> tuple[str, Refusal | None]:
        """(caller, refusal or None); a `compute` request is also refused while every slot is taken."""
        caller = self.caller(authorization, client)
        if isinstance(caller, Refusal):
            return self._refuse(f"addr:{client}", caller)
        if self.settings.rate_per_s > 0:
            wait = self._bucket(caller).take(self.clock())
            if wait > 0:
                return self._refuse(
                    caller,
                    Refusal(
                        429,
                        f"rate limit: {self.settings.rate_per_s:g} requests/s, "
                        f"bursts of {self.settings.rate_burst} (per caller)",
                        {"Retry-After": str(max(1, math.ceil(wait)))},
                    ),
                )
        if compute and self.inflight >= self.settings.max_inflight:
            return self._refuse(caller, self._saturated())
        if compute and self.inflight and self._load is not None:
            expected = self._load(self.inflight)
            if expected > self.budget_ms:
                return self._refuse(caller, busy(expected, self.budget_ms))
        self.counts["admitted"] += 1
        if caller not in self._seen and len(self._seen) < MAX_CALLERS:
            self._seen.add(caller)
            log.info("first request from %s", caller)
        return caller, None

    def set_load(self, expected_ms: Callable[[int], float], budget_ms: float) -> None:
        """expected_ms(requests in progress) -> ms a new one-image request would wait; refuse above budget_ms."""
        self._load, self.budget_ms = expected_ms, budget_ms

    def _saturated(self) -> Refusal:
        return Refusal(
            503, f"service saturated ({self.inflight} requests in progress): retry later", {"Retry-After": "1"}
        )

    @contextmanager
    def slot(self, caller: str) -> Iterator[None]:
        """Hold one of the `max_inflight` slots while parsing and computing; BadInput 503 when none is free."""
        if self.inflight >= self.settings.max_inflight:
            _, refusal = self._refuse(caller, self._saturated())
            raise BadInput(refusal.reason, refusal.status, refusal.headers)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def refused(self, caller: str, refusal: Refusal) -> BadInput:
        """A refusal decided past the head (e.g. the batcher's wait budget), counted and logged like the others."""
        self._refuse(caller, refusal)
        return BadInput(refusal.reason, refusal.status, refusal.headers)

    def _refuse(self, caller: str, refusal: Refusal) -> tuple[str, Refusal]:
        self.counts[str(refusal.status)] += 1
        now, key = self.clock(), f"{caller}:{refusal.status}"
        if now - self._logged.get(key, -math.inf) >= LOG_EVERY_S:
            self._logged[key] = now
            if len(self._logged) > MAX_CALLERS:
                self._logged.clear()
            log.warning("refused %s: %d %s", caller, refusal.status, refusal.reason)
        return caller, refusal


def busy(expected_ms: float, budget_ms: float) -> Refusal:
    """The 503 of a request that would wait longer than the budget (the head check here, the batcher's check)."""
    return Refusal(
        503,
        f"service busy: expected {expected_ms:.0f} ms, over the {budget_ms:.0f} ms wait budget: retry later",
        {"Retry-After": "1"},
    )


def shared_guard(settings: Settings | None = None) -> Guard:
    """The worker process's Guard, made on first use (from `settings`, else the environment), the same object after.

    The admission middleware (serving.admission) and the service's handlers must count the same buckets and slots."""
    if not _PROCESS_GUARD:
        _PROCESS_GUARD.append(Guard(settings if settings is not None else from_env()))
    return _PROCESS_GUARD[0]
