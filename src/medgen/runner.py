"""The stage runner: what every front door (CLI, dvc repro, Prefect, `medgen pipeline`) wraps a stage in.

`run_stage(name, module, cfg)` does, in this order, before the stage computes anything:
1. takes the stage's lock (one run of a stage per checkout; a second is refused naming the first);
2. finishes or discards the output swap of any killed run (medgen.outputs.recover);
3. checks every declared output location is writable (the stage's `outputs(cfg)`), and every configured
   value feasible on this data and machine (medgen.preflight);
4. makes the tracking store ready (fail fast when unreachable, schema created under a lock) and closes
   the ghosts of killed runs: MLflow runs left RUNNING -> KILLED, Optuna trials -> FAIL;
then runs the stage inside one output transaction: its files replace the previous set together, or
not at all. SIGTERM unwinds like Ctrl-C (runs KILLED, trials FAIL, staged files dropped); neither is raised
inside a database client's code (medgen.interrupts).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgen import interrupts, locks, outputs, preflight
from medgen.config import Config
from medgen.errors import MedgenError
from medgen.stages import module as stage_module

log = logging.getLogger(__name__)


def run_stage(name: str, cfg: Config) -> dict[str, Any]:
    """Run stage `name` (its module's `run(cfg)`) with the guarantees above; returns its metrics."""
    state = Path(cfg.tracking.state_dir)
    # The lock comes first and the stage module (torch, MLflow: seconds to import) after it, so a
    # refused second run says so at once.
    with locks.StageLock(state / "locks" / f"{name}.lock", name), interrupts.unwinding_signals(), _quiet_interrupts():
        module = stage_module(name)
        declared = module.outputs(cfg)
        _recover(state, name)
        try:
            with outputs.open_transaction(name, declared, state):
                preflight.check(name, cfg)
                _close_ghosts(cfg)
                return module.run(cfg)
        except KeyboardInterrupt:
            _kill_own_runs()
            _close_dead_ones(cfg)
            raise
        except MedgenError as exc:
            exc.args = (f"{exc}; stage {name} stopped, its previous outputs are unchanged",)
            raise
        except Exception as exc:
            translated = _store_failure(exc)
            if translated is None:
                raise
            raise type(translated)(f"{translated}; stage {name} stopped, its previous outputs are unchanged") from None


def _kill_own_runs() -> None:
    """After Ctrl-C/SIGTERM: no run of this process stays RUNNING (medgen.stores.close_own_runs); best effort,
    the interrupt itself must propagate whatever happens here."""
    try:
        import mlflow

        from medgen import stores

        active = mlflow.active_run()
        stores.close_own_runs(keep=(active.info.run_id,) if active else ())
    except Exception as exc:  # noqa: BLE001 - never mask the interrupt
        log.debug("closing this process's runs after an interrupt failed: %s", exc)


def _close_dead_ones(cfg: Config) -> None:
    """After Ctrl-C/SIGTERM: what the stage's worker processes (medgen.workers: ended before the interrupt
    got here) left RUNNING, closed now rather than by the next run; best effort, as `_kill_own_runs`."""
    try:
        _close_ghosts(cfg)
    except Exception as exc:  # noqa: BLE001 - never mask the interrupt
        log.debug("closing the runs of ended workers after an interrupt failed: %s", exc)


def _store_failure(exc: Exception) -> MedgenError | None:
    from medgen import stores

    return stores.translate(exc)


def _recover(state: Path, name: str) -> None:
    """Recover this stage's journal (we hold its lock) and those of other stages nobody is running."""
    for stage in outputs.pending(state):
        if stage == name:
            done = outputs.recover(state, stage)
        else:
            other = locks.StageLock(state / "locks" / f"{stage}.lock", stage)
            if not other.acquire():
                continue  # running now: its journal is live
            try:
                done = outputs.recover(state, stage)
            finally:
                other.release()
        if done:
            log.warning(done)


def _close_ghosts(cfg: Config) -> None:
    """MLflow runs and Optuna trials left RUNNING by killed processes of this host: KILLED / FAIL."""
    from medgen import search, stores, tracking

    tracking.configure(cfg.tracking)  # fails fast when the store is unreachable or corrupt
    stores.close_dead_runs()
    stores.fail_dead_trials(search.storage_url(cfg.tracking))


class _DropInterruptTracebacks(logging.Filter):
    """Optuna logs a failed trial with its traceback; for Ctrl-C that is 20+ lines of noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


@contextlib.contextmanager
def _quiet_interrupts() -> Iterator[None]:
    # Filters act on the logger a record is created at (Optuna's optimize module) or on a handler.
    dropper = _DropInterruptTracebacks()
    targets = [logging.getLogger("optuna.study._optimize"), *logging.getLogger("optuna").handlers]
    for target in targets:
        target.addFilter(dropper)
    try:
        yield
    finally:
        for target in targets:
            target.removeFilter(dropper)
