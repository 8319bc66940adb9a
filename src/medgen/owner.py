"""Who owns a run, a trial, a lock or a journal, and is that process still alive?

An owner is `"<host>:<pid>:<process start time>"`. The start time makes a recycled pid a different
owner: a run whose pid now belongs to another program is still recognised as dead. Only owners on this
host can be judged; another host's owner is `None` (unknown), never declared dead.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime


def _start_time(pid: int) -> float:
    import psutil

    return psutil.Process(pid).create_time()


def owner_id(pid: int | None = None) -> str:
    """The owner string of process `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_time(pid):.3f}"


def parse(owner: str) -> tuple[str, int, float] | None:
    """(host, pid, start time) of an owner string; None when it is garbled."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    try:
        return host, int(pid_text), float(started)
    except ValueError:
        return None


def owner_alive(owner: str) -> bool | None:
    """True/False for an owner string of this host; None when it belongs to another host (or is garbled)."""
    import psutil

    parsed = parse(owner)
    if parsed is None or parsed[0] != socket.gethostname():
        return None
    try:
        process = psutil.Process(parsed[1])
        # a zombie (killed, not yet reaped by its parent) runs nothing: its trial, run or lock is dead
        return f"{process.create_time():.3f}" == owner.rsplit(":", 1)[1] and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def describe(owner: str) -> str:
    """'pid 123 on host, started 2026-05-01 10:00:00' (for one-line messages)."""
    parsed = parse(owner)
    if parsed is None:
        return repr(owner)
    host, pid, started = parsed
    when = datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {pid} on {host}, started {when}"
