"""medgen.workers: the process pool of a stage's parallel work (generate's diffusion model)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from medgen import workers

ROOT = Path(__file__).resolve().parents[2]
# A stage stand-in: one worker busy for a minute; prints the worker's pid, then waits to be killed.
STAGE = """
import os, sys, time
from medgen import workers
with workers.process_pool(1, 1) as pool:
    pid = pool.submit(os.getpid).result()
    pool.submit(time.sleep, 60)
    print(pid, flush=True)
    time.sleep(60)
"""


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_worker_dies_with_its_stage_even_by_kill_9():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    stage = subprocess.Popen([sys.executable, "-c", STAGE], env=env, stdout=subprocess.PIPE, text=True)
    try:
        worker = int(stage.stdout.readline())
        assert psutil.Process(worker).ppid() == stage.pid
        stage.send_signal(signal.SIGKILL)
        stage.wait(timeout=30)
        assert _gone(worker, within=10)  # without the parent-death signal it would sleep on for a minute
    finally:
        stage.kill()


def test_an_exception_in_the_block_ends_the_workers_before_it_propagates():
    with pytest.raises(RuntimeError, match="stop"):
        with workers.process_pool(1, 1) as pool:
            pid = pool.submit(os.getpid).result()
            pool.submit(time.sleep, 60)
            raise RuntimeError("stop")
    assert _gone(pid, within=1)  # waited for, not merely signalled


def test_results_come_back_from_the_worker():
    with workers.process_pool(1, 1) as pool:
        assert pool.submit(os.getpid).result() != os.getpid()
        assert pool.submit(sum, [1, 2, 3]).result() == 6
