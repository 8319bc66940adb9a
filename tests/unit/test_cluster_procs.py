"""scripts/cluster.py's process handling: stops whole process groups, never a PID that was reused, and
fails with one line (nothing left running) when PostgreSQL is missing. The stack itself runs in
tests/integration/test_cluster.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import cluster_procs  # noqa: E402

CLUSTER = [sys.executable, str(ROOT / "scripts" / "cluster.py")]


def _sleeper(tmp_path):
    entry = cluster_procs.spawn("sleeper", ["bash", "-c", "sleep 60 & sleep 60"], dict(os.environ), tmp_path, tmp_path)
    deadline = time.monotonic() + 10
    while len(psutil.Process(entry["pid"]).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return entry, psutil.Process(entry["pid"]).children()


def test_stop_ends_the_process_group_it_started(tmp_path):
    entry, children = _sleeper(tmp_path)
    assert cluster_procs.alive(entry) and len(children) == 2
    cluster_procs.stop(entry, grace_s=5)
    assert not cluster_procs.alive(entry)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_a_pid_with_another_start_time_is_never_signalled(tmp_path):
    entry, _ = _sleeper(tmp_path)
    cluster_procs.stop({**entry, "started": entry["started"] - 100.0}, grace_s=1)  # as if the PID were reused
    assert cluster_procs.alive(entry)
    cluster_procs.stop(entry, grace_s=5)
    assert not cluster_procs.alive(entry)


def test_missing_postgresql_is_one_line_and_leaves_nothing_running(tmp_path):
    env = {**os.environ, "MEDGEN_PG_BIN": str(tmp_path / "nowhere")}
    done = subprocess.run(
        [*CLUSTER, "up", "--dir", str(tmp_path / "c")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"cluster: error: {tmp_path / 'nowhere'}/initdb not found: apt-get install -y postgresql (or set MEDGEN_PG_BIN)"
    ]
    assert not (tmp_path / "c" / "state.json").exists()
    status = subprocess.run(
        [*CLUSTER, "status", "--dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 1 and "not running" in status.stdout


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_worker_count_must_be_positive(workers, tmp_path):
    done = subprocess.run(
        [*CLUSTER, "up", "--dir", str(tmp_path), "--workers", workers], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "--workers must be >= 1" in done.stderr


def test_processes_stopped_together_share_one_grace_period(tmp_path):
    # each ignores SIGTERM (as Prefect workers that ran flows do for the whole grace): one after another, three
    # would take 3 x 2 s before their SIGKILLs; together they take one grace period
    stubborn = ["bash", "-c", "trap '' TERM; sleep 60"]
    sleepers = [cluster_procs.spawn(f"worker-{i}", stubborn, dict(os.environ), tmp_path, tmp_path) for i in range(3)]
    time.sleep(0.5)  # let bash install its trap
    started = time.monotonic()
    cluster_procs.stop_together(sleepers, grace_s=2)
    assert 2 <= time.monotonic() - started < 5
    assert not any(cluster_procs.alive(e) for e in sleepers)
