"""File locks: one run per stage per checkout, and one process at a time initialising a store.

Both are `flock` locks on a file: the kernel drops them when the holding process dies (even by kill -9),
so a crash never leaves a stale lock behind. The lock file holds its owner (medgen.owner) so a refused
run can say which process holds it. Locks are per open file, so two threads of one process (Prefect
tasks) exclude each other as two processes do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from medgen.errors import MedgenError
from medgen.owner import describe, owner_id

INIT_TIMEOUT_S = 60.0  # schema creation takes seconds; longer means a hung process holds the lock


class LockedError(MedgenError):
    """Another live process holds the lock."""


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise MedgenError(f"cannot create lock file {path} ({exc.strerror})") from None


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def holder(path: str | Path) -> str:
    """The owner string written in a lock file ('' when unreadable or empty)."""
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


class StageLock:
    """`with StageLock(path, "classify"):` refuses (LockedError, one line) while another process runs it."""

    def __init__(self, path: str | Path, stage: str) -> None:
        self.path, self.stage, self.fd = Path(path), stage, -1

    def acquire(self) -> bool:
        """Take the lock if it is free; False when another process (or thread) holds it."""
        fd = _open(self.path)
        if not _try_lock(fd):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, (owner_id() + "\n").encode(), 0)
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def __enter__(self) -> StageLock:
        if not self.acquire():
            who = holder(self.path)
            first = describe(who) if who else "another process"
            raise LockedError(
                f"stage {self.stage} is already running in this checkout ({first}; lock {self.path}); "
                "wait for it to finish or stop it"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def init_lock(path: str | Path, timeout_s: float = INIT_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on `path` for a block (waiting up to timeout_s): store schema creation."""
    fd = _open(Path(path))
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise MedgenError(f"waited {timeout_s:.0f} s for {path} (held by {holder(path) or 'another process'})")
            time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (owner_id() + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)
