"""The wait budget (serve.max_wait_ms): the batcher prices a new request from its measured call cost and the work
ahead of it, the guard refuses at the head (503) when that is over the budget, and the batcher refuses with the
real image count once the body is parsed; an idle service takes any request. Unit checks with a fake clock, then
one real `bentoml serve` with a tiny budget."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest

from serving.batching import CallCost, GreedyBatcher, Overloaded
from serving.guard import Guard
from serving.settings import Settings
from tests.serving.conftest import burst_of_503s, running


def test_call_cost_prices_calls_and_follows_them():
    cost = CallCost(first_ms=10.0, extra_ms=2.0)
    assert [cost(0), cost(1), cost(4)] == [0.0, 10.0, 16.0]
    cost.observe(1, 20.0)  # one-image calls move `first` by EWMA
    assert cost.first == pytest.approx(11.0)
    cost.observe(5, 11.0 + 4 * 12.0)  # larger calls move `extra`: (t - first) / (n - 1) = 12
    assert cost.extra == pytest.approx(2.0 + 0.1 * 10.0)
    cost.observe(3, 0.0)  # a call faster than one image never makes `extra` negative
    assert cost.extra >= 0.0


def test_call_cost_measure_times_one_and_several_images():
    cost = CallCost.measure(lambda n: time.sleep(0.004 * n), repeats=2, big=4)
    assert cost.first >= 4.0 and cost.extra > 2.0  # sleep never returns early; the box may only add time


def test_expected_ms_counts_the_running_call_the_queue_and_the_others():
    now = [100.0]
    batcher = GreedyBatcher(lambda b: b, max_items=8, cost=CallCost(10.0, 2.0), clock=lambda: now[0])
    assert batcher.expected_ms(1) == 10.0 and batcher.expected_ms(3) == 14.0  # idle: its own call
    batcher.call_images, batcher._call_started = 4, now[0]  # a 4-image call (16 ms) started now...
    now[0] += 0.006  # ...6 ms ago: 10 ms left
    batcher.queued_images = 2
    assert batcher.expected_ms(1) == pytest.approx(10.0 + 14.0)  # then one call of 2 queued + 1 new
    assert batcher.expected_ms(1, others=2) == pytest.approx(10.0 + 18.0)  # admitted, not queued: 1 image each
    assert batcher.expected_ms(8) == pytest.approx(10.0 + 2 * 10.0 + 2.0 * 8)  # 10 images: two calls
    assert GreedyBatcher(lambda b: b, max_items=8).expected_ms(5) == 0.0  # no cost model: no estimate


def test_batcher_refuses_over_budget_only_when_busy():
    async def main():
        batcher = GreedyBatcher(list, max_items=8, cost=CallCost(50.0, 10.0))
        alone = await batcher(np.zeros((64, 2)), budget_ms=1.0)  # idle: admitted however long it takes
        first = asyncio.ensure_future(batcher(np.zeros((1, 2)), budget_ms=1.0))
        await asyncio.sleep(0)  # first is queued: the batcher is busy now
        with pytest.raises(Overloaded) as refused:
            await batcher(np.zeros((1, 2)), budget_ms=55.0)  # one call with the queued image: 50 + 10 ms
        within = await batcher(np.zeros((1, 2)), budget_ms=1000.0)
        return alone, await first, within, refused.value

    alone, first, within, refused = asyncio.run(main())
    assert alone.shape == (64, 2) and first.shape == within.shape == (1, 2)
    assert refused.budget_ms == 55.0 and 55.0 < refused.expected_ms <= 60.0  # the 64-image call lowered `extra`


def test_guard_refuses_at_the_head_over_budget_while_busy():
    guard = Guard(Settings(rate_per_s=0.0, max_inflight=8))
    guard.set_load(lambda inflight: 25.0 * inflight, budget_ms=40.0)
    assert guard.check(None, "a", True)[1] is None  # nothing in progress: always admitted
    with guard.slot("addr:a"):
        assert guard.check(None, "b", True)[1] is None  # 25 ms expected <= 40
        with guard.slot("addr:b"):
            busy = guard.check(None, "c", True)[1]  # 50 ms expected > 40
            assert busy.status == 503 and busy.headers["Retry-After"] == "1"
            assert "busy: expected 50 ms, over the 40 ms wait budget" in busy.reason
            assert guard.check(None, "c", False)[1] is None  # /metadata is not compute: never budgeted
    assert guard.counts["503"] == 1


@pytest.fixture(scope="module")
def tiny_budget(export_dir, tmp_path_factory):
    with running(export_dir, tmp_path_factory.mktemp("budget"), MEDGEN_MAX_WAIT_MS="1") as live:
        yield live.url


def test_a_burst_over_a_tiny_budget_gets_503_busy_and_the_rest_200(tiny_budget):
    limits = httpx.get(f"{tiny_budget}/metadata", timeout=10).json()["limits"]
    assert limits["max_wait_ms"] == 1 and limits["wait_budget_ms"] == 1.0
    batch = {"images": np.zeros((64, 28, 28), dtype=int).tolist()}
    burst_of_503s(tiny_budget, batch, "wait budget", workers=8)
    assert httpx.post(f"{tiny_budget}/classify", json=batch, timeout=60).status_code == 200  # idle again: served


def test_the_auto_budget_is_measured_at_start(export_dir, tmp_path_factory):
    with running(export_dir, tmp_path_factory.mktemp("auto"), MEDGEN_MAX_WAIT_MS="0") as live:
        limits = httpx.get(f"{live.url}/metadata", timeout=10).json()["limits"]
    assert limits["max_wait_ms"] == 0 and 0 < limits["wait_budget_ms"] < 10_000  # 1.5 x a one-image call
