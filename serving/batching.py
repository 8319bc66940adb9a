"""Adaptive batching for one CPU model: greedy (continuous) batching, no timers, and the load it is carrying.

While an onnxruntime call runs, requests that arrive queue up; when it returns, the next call takes
everything queued (up to `max_items` images). Idle: a request runs at once (no added latency). Busy:
batches grow with the load. BentoML's CorkDispatcher (MEDGEN_BATCHER=cork) polls every 1 ms and waits
for an average of past waits, so after a burst it keeps delaying lone requests: measured on the shared
2-core machine, one 64-image .npy request at concurrency 1 took p50 280 ms with it and 15 ms with this.

The batcher also says how long a new request would take (`expected_ms`): the running call's remainder plus one
call for everything queued and the new images, priced by `CallCost` (T(n) = one-image time + per-extra-image
time x (n - 1), measured at start and followed per call). serving.guard refuses a compute request at once (503)
when that exceeds the worker's wait budget (`max_wait_ms`), so admitted latency stays bounded whatever one
image costs (a single network or a 12-pass ensemble) instead of by a count of requests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
from starlette.concurrency import run_in_threadpool

EWMA = 0.1  # weight of the newest call in the cost figures


class Overloaded(Exception):
    """The request would wait longer than the budget: answered 503 + Retry-After (serving.service)."""

    def __init__(self, expected_ms: float, budget_ms: float) -> None:
        super().__init__(expected_ms, budget_ms)
        self.expected_ms, self.budget_ms = expected_ms, budget_ms


class CallCost:
    """T(n) in ms for one call of n images: `first` (a one-image call) + `extra` x (n - 1), both followed by EWMA."""

    def __init__(self, first_ms: float, extra_ms: float) -> None:
        self.first, self.extra = max(first_ms, 0.0), max(extra_ms, 0.0)

    @classmethod
    def measure(cls, fn: Callable[[int], object], repeats: int = 3, big: int = 8) -> CallCost:
        """Time fn(1) and fn(big) (the best of `repeats`, after one warm-up call each) on the idle model."""

        def best(n: int) -> float:
            fn(n)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(n)
                times.append((time.perf_counter() - start) * 1000)
            return min(times)

        first = best(1)
        return cls(first, (best(big) - first) / (big - 1))

    def __call__(self, n: int) -> float:
        return self.first + self.extra * max(n - 1, 0) if n > 0 else 0.0

    def observe(self, n: int, ms: float) -> None:
        if n == 1:
            self.first += EWMA * (ms - self.first)
        elif n > 1:
            self.extra += EWMA * (max((ms - self.first) / (n - 1), 0.0) - self.extra)


class GreedyBatcher:
    """`await batcher(x)` with x (n, ...) -> that request's rows of fn([x1, x2, ...]) (one call per batch)."""

    def __init__(
        self,
        fn: Callable[[Sequence[np.ndarray]], Sequence[np.ndarray]],
        max_items: int,
        cost: CallCost | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.fn, self.max_items, self.cost, self.clock = fn, max_items, cost, clock
        self._queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._running = False
        self.calls = 0  # onnxruntime calls made, for tests/metrics
        self.items = 0  # images through them
        self.queued_images = 0
        self.call_images = 0  # images of the call running now (0: none)
        self.call_requests = 0
        self._call_started = 0.0

    @property
    def requests(self) -> int:
        """Requests queued or in the running call."""
        return len(self._queue) + self.call_requests

    def expected_ms(self, n: int, others: int = 0) -> float:
        """ms until a new request of n images would be answered: the running call's remainder, then the calls for
        everything queued, `others` admitted requests not queued yet (one image each) and these n. 0 without a
        cost model."""
        if self.cost is None:
            return 0.0
        remainder = 0.0
        if self.call_images:
            remainder = max(self.cost(self.call_images) - (self.clock() - self._call_started) * 1000, 0.0)
        ahead = self.queued_images + max(others, 0) + n
        calls = math.ceil(ahead / self.max_items)
        return remainder + calls * self.cost(1) + self.cost.extra * (ahead - calls)

    async def __call__(self, x: np.ndarray, budget_ms: float = math.inf) -> np.ndarray:
        """x's outputs; Overloaded when the batcher is busy and x would wait longer than budget_ms (an idle batcher
        takes any request, so a large one can always run)."""
        if self.requests and budget_ms < math.inf:
            expected = self.expected_ms(len(x))
            if expected > budget_ms:
                raise Overloaded(expected, budget_ms)
        future = asyncio.get_running_loop().create_future()
        self._queue.append((x, future))
        self.queued_images += len(x)
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        taken, size = [], 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_items):
            item = self._queue.popleft()
            taken.append(item)
            size += len(item[0])
        self.queued_images -= size
        return taken

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = self._take()
                n = sum(len(x) for x, _ in taken)
                self.call_images, self.call_requests, self._call_started = n, len(taken), self.clock()
                try:
                    outputs = await run_in_threadpool(self.fn, [x for x, _ in taken])
                except Exception as exc:  # the callers get the error, the batcher keeps going
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                finally:
                    elapsed_ms = (self.clock() - self._call_started) * 1000
                    self.call_images = self.call_requests = 0
                if self.cost is not None:
                    self.cost.observe(n, elapsed_ms)
                self.calls, self.items = self.calls + 1, self.items + n
                for (_, future), output in zip(taken, outputs):
                    if not future.done():  # a client that went away cancelled its future
                        future.set_result(output)
        finally:
            self._running = False
