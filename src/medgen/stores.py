"""The MLflow tracking store and the Optuna storage: set up once, fail fast, and no ghosts.

* Schema creation runs under a file lock beside a SQLite database (`<db>.lock`): two processes opening
  a fresh store at once raced on MLflow's migrations (`duplicate column name`) and Optuna's tables.
* A SQLite file is checked (`PRAGMA quick_check`) before use: a corrupt or truncated database is one
  line naming the file, not a traceback from deep inside SQLAlchemy.
* A tracking server (http/https) is pinged with a short timeout before any work, and MLflow's own HTTP
  retries are bounded (`HTTP_DEFAULTS`, overridable from the environment): an unreachable server fails
  in seconds, not after MLflow's default ~4 minutes of retries.
* Ghosts: every run carries its owner (`medgen.owner` tag, medgen.owner); `close_dead_runs` marks runs
  left RUNNING by a dead process on this host KILLED, `fail_dead_trials` does the same for Optuna trials.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medgen.errors import MedgenError, TransientError
from medgen.locks import init_lock
from medgen.owner import describe, owner_alive

log = logging.getLogger(__name__)
OWNER_TAG = "medgen.owner"
# MLflow's defaults retry an unreachable server 7 times with backoff factor 2 and a 120 s timeout (~4 min).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
PING_TIMEOUT_S = 5.0
DB_CONNECT_TIMEOUT_S = 10  # PostgreSQL/MySQL connect timeout for the Optuna storage
_ready: set[str] = set()  # stores set up by this process


class StoreError(MedgenError):
    """The tracking store or the study storage is corrupt or refuses the operation."""


class StoreUnavailable(StoreError, TransientError):
    """The store cannot be reached now (server down, database locked): retrying may help."""


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///` URL (None for other URLs and in-memory databases)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_sqlite(path: Path, what: str) -> None:
    """A SQLite file that exists must open and pass quick_check; else one StoreError line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        verdict = str(exc)
    if verdict != "ok":
        raise StoreError(
            f"{path}: the {what} is not a readable SQLite database ({verdict}); "
            "move it away to start a fresh store, or restore a backup"
        )


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, without SQLAlchemy's '[SQL: ...]' and links."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


@contextlib.contextmanager
def initialising(url: str, what: str) -> Iterator[None]:
    """Run a store's set-up block once at a time (file lock for SQLite) with errors as one line."""
    import sqlalchemy.exc

    path = sqlite_path(url)
    lock = init_lock(path.with_name(path.name + ".lock")) if path else contextlib.nullcontext()
    try:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        with lock:
            if path is not None:
                check_sqlite(path, what)
            yield
    except sqlalchemy.exc.OperationalError as exc:  # cannot connect, database locked: may pass
        raise StoreUnavailable(f"{what} {redact(url)}: {one_line(exc)}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StoreError(f"{what} {redact(url)}: {one_line(exc)}") from None
    except (ImportError, OSError) as exc:  # a missing database driver, an unwritable folder
        raise StoreError(f"{what} {redact(url)}: {one_line(exc)}") from None


def translate(exc: BaseException) -> StoreError | None:
    """A store failure raised in the middle of a stage as one line (None: not a store failure)."""
    import requests
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return StoreUnavailable(f"tracking/study database: {one_line(exc)}")
    if isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
        return StoreError(f"tracking/study database: {one_line(exc)}")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return StoreUnavailable(f"tracking server: {one_line(exc)}")
    message = str(exc)
    if type(exc).__name__ == "MlflowException" and "API request to" in message:  # retries exhausted
        return StoreUnavailable(f"tracking server: {one_line(exc)}")
    return None


def redact(url: str) -> str:
    """A URL without its password (for messages)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        creds, _, host = rest.partition("@")
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def apply_http_defaults() -> None:
    """Bound MLflow's HTTP retries unless the environment already sets them (docs/reliability.md)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def ping(uri: str) -> None:
    """GET <server>/health with a short timeout: no answer, or an answer that is not MLflow's (a proxy's
    404, a 5xx), is one StoreUnavailable line. 401/403 count as up (the server wants credentials)."""
    import requests

    hint = "start it, or point MLFLOW_TRACKING_URI / tracking.mlflow_uri at a reachable store"
    try:
        answer = requests.get(uri.rstrip("/") + "/health", timeout=PING_TIMEOUT_S)
    except requests.RequestException as exc:
        reason = f"{type(exc).__name__} within {PING_TIMEOUT_S:.0f} s"
        raise StoreUnavailable(f"MLflow tracking server {redact(uri)} unreachable ({reason}); {hint}") from None
    if answer.status_code not in (200, 401, 403):
        raise StoreUnavailable(
            f"MLflow tracking server {redact(uri)} unreachable (HTTP {answer.status_code} on "
            f"/health: not an MLflow server, or it is failing); {hint}"
        )


def mlflow_ready(uri: str) -> None:
    """Make the tracking store usable: bounded retries and a ping (server) or a checked, migrated schema
    created under a lock (SQLite). Once per process and URI."""
    if uri in _ready:
        return
    apply_http_defaults()
    if uri.startswith(("http://", "https://")):
        ping(uri)
    else:
        import mlflow

        with initialising(uri, "MLflow tracking store"):
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # creates/migrates the schema
    _ready.add(uri)


def engine_kwargs(url: str) -> dict[str, Any] | None:
    """SQLAlchemy engine options for the Optuna storage: SQLite waits for locks, servers time out fast."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 60}}
    if url.startswith(("postgresql", "mysql")):
        return {"connect_args": {"connect_timeout": DB_CONNECT_TIMEOUT_S}}
    return None


# ---------------------------------------------------------------- ghosts
def close_dead_runs() -> list[str]:
    """Mark KILLED every MLflow run left RUNNING by a dead process of this host (the active tracking
    URI, all experiments); returns their ids. Runs of live processes or other hosts are left alone."""
    import mlflow

    client = mlflow.MlflowClient()
    running = mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    dead = [r for r in running if owner_alive(r.data.tags.get(OWNER_TAG, "")) is False]
    for run in dead:
        client.set_tag(run.info.run_id, "medgen.closed_by", "next run: owner process was dead")
        client.set_terminated(run.info.run_id, status="KILLED")
    if dead:
        names = ", ".join(f"{r.info.run_name} ({describe(r.data.tags[OWNER_TAG])})" for r in dead[:5])
        log.warning(
            "marked %d MLflow run(s) left RUNNING by a killed process as KILLED: %s%s",
            len(dead),
            names,
            " ..." if len(dead) > 5 else "",
        )
    return [r.info.run_id for r in dead]


def close_own_runs(keep: tuple[str, ...] = ()) -> list[str]:
    """Mark KILLED every MLflow run this process left RUNNING (its `medgen.owner` tag), except the run ids in
    `keep` (runs still open around the caller, e.g. `medgen pipeline`'s). An interrupt can land inside MLflow
    between creating a run and entering the code that would end it KILLED; the stage runner calls this as it
    unwinds, so nothing of this process stays RUNNING."""
    import mlflow

    from medgen.owner import owner_id

    client, me = mlflow.MlflowClient(), owner_id()
    running = mlflow.search_runs(
        search_all_experiments=True, filter_string="attributes.status = 'RUNNING'", output_format="list"
    )
    own = [r for r in running if r.data.tags.get(OWNER_TAG) == me and r.info.run_id not in keep]
    for run in own:
        client.set_terminated(run.info.run_id, status="KILLED")
    return [r.info.run_id for r in own]


def fail_dead_trials(url: str) -> dict[str, list[int]]:
    """In every study of the Optuna storage `url`, mark FAIL the trials whose owner process is dead
    (medgen.search.fail_dead_trials); returns study -> trial numbers. No storage file: nothing to do."""
    import optuna

    from medgen import search

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return {}
    storage = search._storage(url)
    failed = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        numbers = search.fail_dead_trials(optuna.load_study(study_name=summary.study_name, storage=storage))
        if numbers:
            failed[summary.study_name] = numbers
    return failed
