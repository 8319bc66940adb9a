"""One run per stage per checkout: a second is refused with one line naming the first; a killed holder
frees the lock; different stages do not exclude each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medgen import locks
from medgen.owner import owner_id

from .conftest import assert_one_line_error, env_for, medgen, snapshot

HOLDER = textwrap.dedent("""
    import sys, time
    from medgen import locks
    with locks.StageLock(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(120)
""")


def _hold(lock: Path, stage: str) -> subprocess.Popen:
    """A child process holding the stage lock (as a running stage does) until it is killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), stage], env=env, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_run_of_a_stage_is_refused_naming_the_first(fault_dir):
    holder = _hold(fault_dir / ".medgen/locks/prepare.lock", "prepare")
    try:
        result = medgen(fault_dir, "stage", "prepare")
        assert_one_line_error(
            result,
            "stage prepare is already running in this checkout",
            f"pid {holder.pid} on ",
            "started ",
            "wait for it to finish or stop it",
        )
        assert not (fault_dir / "data").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()


def test_a_kill_9_holder_frees_the_lock(tmp_path):
    lock = tmp_path / "locks/classify.lock"
    holder = _hold(lock, "classify")
    with pytest.raises(locks.LockedError, match=f"pid {holder.pid}"), locks.StageLock(lock, "classify"):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks.StageLock(lock, "classify"):  # the kernel dropped the dead process's flock
        assert locks.holder(lock) == owner_id()
    assert locks.holder(lock) == ""


def test_threads_of_one_process_exclude_each_other_and_other_stages_do_not(tmp_path):
    first = locks.StageLock(tmp_path / "classify.lock", "classify")
    assert first.acquire()
    try:
        assert not locks.StageLock(tmp_path / "classify.lock", "classify").acquire()  # a second open file
        other = locks.StageLock(tmp_path / "generate.lock", "generate")
        assert other.acquire()
        other.release()
    finally:
        first.release()


def test_two_prepare_runs_started_together_in_one_checkout(fault_dir):
    """Both start on a fresh store at the same moment: each either completes or is refused in one line."""
    env = env_for(fault_dir)
    (fault_dir / "mlruns" / "mlflow.db").unlink()  # fresh store: the schema is created by the race winner
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "medgen.cli", "stage", "prepare"],
            cwd=fault_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(c.wait(timeout=300), c.stderr.read()) for c in children]
    for rc, err in results:
        assert "Traceback" not in err, err[-2000:]
        assert rc == 0 or (rc == 1 and "stage prepare is already running" in err), err[-2000:]
    assert any(rc == 0 for rc, _ in results)
    assert snapshot(fault_dir / "data/prepared") and (fault_dir / "metrics/prepare.json").exists()
