"""Progress a person can follow: trial i/n with the best so far, epoch j/m, seed k/n.

On a terminal each level is a tqdm bar; otherwise (dvc repro's log, CI, a Prefect worker) a plain log
line per update, rate-limited, and a heartbeat line from a background thread whenever nothing has been
printed for `HEARTBEAT_S` seconds, so a long stage is never silent for more than that.
Nothing here changes what a stage computes: progress is output only.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger("medgen.progress")
HEARTBEAT_S = float(os.environ.get("MEDGEN_PROGRESS_HEARTBEAT_S", 30))
MIN_INTERVAL_S = float(os.environ.get("MEDGEN_PROGRESS_INTERVAL_S", 10))

_active: list[Progress] = []  # innermost last
_lock = threading.Lock()
_last_line = [time.monotonic()]
_ticker: threading.Thread | None = None


def _use_bars() -> bool:
    mode = os.environ.get("MEDGEN_PROGRESS", "auto")  # auto | bar | log
    if mode != "auto":
        return mode == "bar"
    return sys.stderr.isatty()


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """One level of progress: `update(i, **facts)` after step i of `total` (1-based count of done steps)."""

    def __init__(self, total: int, label: str, start: int = 0, unit: str = "") -> None:
        self.total, self.label, self.done, self.unit = total, label, start, unit
        self.started = time.monotonic()
        self.facts: dict[str, Any] = {}
        self._last = 0.0
        self._printed = start  # the `done` count of the last line printed
        self._bar = None
        if _use_bars():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=start,
                desc=label,
                unit=unit or "it",
                leave=len(_active) == 0,
                position=len(_active),
                dynamic_ncols=True,
                file=sys.stderr,
            )
        with _lock:
            _active.append(self)
        _ensure_ticker()

    def line(self) -> str:
        facts = " ".join(f"{k} {_format(v)}" for k, v in self.facts.items() if v is not None)
        elapsed = time.monotonic() - self.started
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.label}: {self.done}/{self.total}{unit} {facts} ({elapsed:.0f} s)".rstrip()

    def update(self, done: int, **facts: Any) -> None:
        step, self.done = done - self.done, done
        self.facts.update(facts)
        if self._bar is not None:
            self._bar.update(step)
            self._bar.set_postfix({k: _format(v) for k, v in self.facts.items() if v is not None}, refresh=True)
            _last_line[0] = time.monotonic()
            return
        now = time.monotonic()
        if now - self._last >= MIN_INTERVAL_S or done >= self.total or self._last == 0.0:
            self._last, self._printed = now, done
            _emit(self.line())

    def close(self) -> None:
        """End this level; on a log, print its last state if the rate limit held it back (early stop, prune)."""
        if self._bar is not None:
            self._bar.close()
        elif self._last and self._printed != self.done:
            self._printed = self.done
            _emit(self.line())
        with _lock:
            if self in _active:
                _active.remove(self)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _emit(text: str) -> None:
    _last_line[0] = time.monotonic()
    log.info(text)


def _heartbeat() -> None:
    while True:
        time.sleep(max(1.0, HEARTBEAT_S / 3))
        beat()


def beat() -> None:
    """One heartbeat check: off a terminal, print every open level if nothing was printed for HEARTBEAT_S."""
    with _lock:
        levels = list(_active)
    if levels and levels[-1]._bar is None and time.monotonic() - _last_line[0] >= HEARTBEAT_S:
        _emit("still working: " + " > ".join(p.line() for p in levels))


def _ensure_ticker() -> None:
    global _ticker
    if _ticker is None or not _ticker.is_alive():
        _ticker = threading.Thread(target=_heartbeat, name="medgen-progress", daemon=True)
        _ticker.start()
