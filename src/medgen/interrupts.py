"""Ctrl-C and SIGTERM for a running stage: raised in the stage's own code, never inside a database client.

Python raises KeyboardInterrupt in the main thread at whatever bytecode it has reached. When that is inside
SQLAlchemy or sqlite3 (an MLflow or Optuna write), two things go wrong, both seen on this project's CI and
reproduced with a loop of MLflow writes to SQLite sent SIGTERM at random moments (4 of 44 went wrong):
* a transaction stays open on a connection of this process, so the clean-up writes that follow (runs KILLED,
  trials FAIL) wait on the process's own lock and fail with "database is locked";
* the exception is raised inside a garbage-collection callback (SQLAlchemy returns connections to its pool
  from one), where Python prints it and drops it: the stage runs on as if never interrupted.

So, inside `unwinding_signals()` (the stage runner wraps every stage in it; main thread only):
* SIGTERM, and SIGINT while Python's own Ctrl-C handler is installed, raise `Interrupted` at once, unless the
  main thread is inside a database client (a frame of one of `CLIENT_MODULES`). Then the interrupt is held
  and tried again every `RETRY_S` until that code has returned.
* A second signal while one is held raises at once: a client stuck on a dead server cannot trap the user.
* An interrupt that was dropped is raised again: every `RECHECK_S`, while the raised exception is neither
  being handled in the stack (an `except`, `finally` or `__exit__` under way, or chained to one) nor held in
  a frame's variables (Optuna keeps the trial's exception while it records the trial FAIL), it is raised anew.
The retries are SIGURG signals a timer thread sends to the main thread (`signal.pthread_kill`): a signal, so
a main thread blocked in a wait wakes for them; SIGURG, whose default is to ignore, so a retry that arrives
after the block has ended is harmless.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from medgen.errors import Interrupted

# Code that holds a database transaction or connection of this process; not HTTP clients (MLflow's REST store):
# an interrupted request leaves nothing of this process's open, and a hung server must not hold Ctrl-C back.
CLIENT_MODULES = (
    "sqlalchemy",
    "sqlite3",
    "_sqlite3",
    "alembic",
    "psycopg2",
    "pymysql",
    "optuna.storages",
    "mlflow.store.db",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)
RETRY_S = 0.02
RECHECK_S = 2.0
_RETRY_SIGNAL = signal.SIGURG


def in_client(frame: FrameType | None) -> bool:
    """Whether `frame` or a frame under it runs the code of a database client (`CLIENT_MODULES`)."""
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if any(name == m or name.startswith(m + ".") for m in CLIENT_MODULES):
            return True
        frame = frame.f_back
    return False


def in_flight(exc: BaseException, frame: FrameType | None) -> bool:
    """Whether `exc` is still on its way out: being handled in the stack (or chained to what is), or held in a
    variable of `frame` or a frame under it."""
    todo, seen = [sys.exc_info()[1]], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if e is exc:
            return True
        seen.add(id(e))
        todo += [e.__context__, e.__cause__]
    while frame is not None:
        if any(value is exc for value in frame.f_locals.values()):
            return True
        frame = frame.f_back
    return False


class _Guard:
    """The state of one `unwinding_signals()` block."""

    def __init__(self) -> None:
        # re-entrant: a signal handler runs on the main thread, maybe while that thread holds the lock
        self.lock = threading.RLock()
        self.armed = True
        self.held: str | None = None  # the name of a signal not raised yet
        self.raised: Interrupted | None = None
        self.retry_due = False
        self.timer: threading.Timer | None = None

    def schedule(self, delay: float) -> None:
        with self.lock:
            if self.armed:
                if self.timer is not None:
                    self.timer.cancel()
                self.timer = threading.Timer(delay, self._trip)
                self.timer.daemon = True
                self.timer.start()

    def _trip(self) -> None:
        with self.lock:
            if self.armed:
                self.retry_due = True
                signal.pthread_kill(threading.main_thread().ident, _RETRY_SIGNAL)

    def disarm(self) -> None:
        with self.lock:
            self.armed = False
            if self.timer is not None:
                self.timer.cancel()
            self.raised = None

    def raise_now(self, name: str) -> None:
        self.held = None
        self.raised = Interrupted(name)
        self.schedule(RECHECK_S)
        raise self.raised

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT or SIGTERM."""
        name = signal.Signals(signum).name
        if not self.armed:
            raise Interrupted(name)
        if self.held is not None or self.raised is not None:
            self.raise_now(name)  # asked again: at once, wherever the main thread is
        self.held = name
        self.decide(frame)

    def on_retry(self, _signum: int, frame: FrameType | None) -> None:
        with self.lock:
            due, self.retry_due = self.retry_due, False
        if due and self.armed:
            self.decide(frame)

    def decide(self, frame: FrameType | None) -> None:
        """Raise the interrupt here, or try again a little later (see the module text)."""
        if self.held is not None:
            if in_client(frame):
                self.schedule(RETRY_S)
            else:
                self.raise_now(self.held)
        elif self.raised is not None:
            if in_flight(self.raised, frame):
                self.schedule(RECHECK_S)
            elif in_client(frame):
                self.schedule(RETRY_S)
            else:  # dropped on the way: again
                self.raise_now(self.raised.signal_name)


@contextlib.contextmanager
def unwinding_signals() -> Iterator[None]:
    """SIGTERM (and SIGINT, when Python's Ctrl-C handler is installed) raise `Interrupted` in the block's
    code as the module text says; outside the main thread (Prefect's workers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    guard = _Guard()
    signums = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signums.append(signal.SIGINT)
    previous: dict[int, Any] = {s: signal.signal(s, guard.on_signal) for s in signums}
    previous[_RETRY_SIGNAL] = signal.signal(_RETRY_SIGNAL, guard.on_retry)
    try:
        yield
    finally:
        try:
            guard.disarm()  # a signal landing in here raises; the handlers are restored all the same
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
