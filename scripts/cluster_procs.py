"""Processes and PostgreSQL for scripts/cluster.py: start in a process group, stop by PID (checked against
the process start time), wait for readiness, initdb/start/createdb as a non-root user."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("MEDGEN_PG_BIN", "/usr/lib/postgresql/15/bin"))  # Debian's postgresql-15
PG_USER = "medgen"


class ClusterError(Exception):
    """A failure the user can act on; printed as one line `cluster: error: ...`."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def started_at(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(entry: dict[str, Any]) -> bool:
    """True when the recorded process still runs (same PID *and* same start time)."""
    return started_at(entry["pid"]) == entry["started"]


def spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path, cwd: Path, user: str | None = None) -> dict:
    """Start `cmd` in its own process group (so stopping it also stops what it forked); log to logs/<name>.log."""
    log = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        user=user,
    )
    return {"name": name, "pid": proc.pid, "started": started_at(proc.pid), "cmd": cmd[:4]}


def stop(entry: dict[str, Any], grace_s: float = 20.0) -> None:
    """SIGTERM (PostgreSQL: SIGINT, its fast shutdown) to the process group led by the recorded PID, then
    SIGKILL after `grace_s`; a PID that now belongs to another process is left alone."""
    stop_together([entry], grace_s)


def stop_together(entries: list[dict[str, Any]], grace_s: float = 20.0) -> None:
    """`stop` for several processes at once: each gets its first signal, then those still running after
    `grace_s` get SIGKILL together (Prefect workers that have run flows did not exit within the grace after
    SIGTERM: one after another, three of them took 60 s)."""
    running = [e for e in entries if alive(e)]
    for last in (False, True):
        for entry in list(running):
            sig = signal.SIGKILL if last else signal.SIGINT if entry["name"] == "postgres" else signal.SIGTERM
            try:
                os.killpg(entry["pid"], sig)
            except ProcessLookupError:
                running.remove(entry)
        deadline = time.monotonic() + grace_s
        while running and time.monotonic() < deadline:
            running = [e for e in running if alive(e) and not _reaped(e["pid"])]
            time.sleep(0.2)
        if not running:
            return


def _reaped(pid: int) -> bool:
    """Collect our own exited child (a zombie still 'exists' for psutil)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        return False


def wait_until(what: str, check, timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet (connection refused, 503, ...)
            pass
        time.sleep(0.5)
    raise ClusterError(f"{what} not ready after {timeout_s:.0f} s (logs in {logs})")


def http_ok(url: str) -> bool:
    import httpx

    return httpx.get(url, timeout=2).status_code == 200


# ---------------------------------------------------------------- PostgreSQL
def pg_os_user() -> str | None:
    """The OS user PostgreSQL runs as: this one, or `postgres` when we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterError(
            "running as root and no `postgres` user: PostgreSQL refuses root "
            "(apt-get install -y postgresql creates the user)"
        ) from None
    return "postgres"


def init_postgres(pgdata: Path, password: str, user: str | None) -> None:
    """initdb once: superuser `medgen` with scram-sha-256 password auth; a folder holding PG_VERSION is kept."""
    if (pgdata / "PG_VERSION").exists():
        return
    if not (PG_BIN / "initdb").exists():
        raise ClusterError(f"{PG_BIN}/initdb not found: apt-get install -y postgresql (or set MEDGEN_PG_BIN)")
    pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
    pwfile = pgdata.parent / ".pgpass-init"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if user:
        shutil.chown(pgdata, user)
        shutil.chown(pwfile, user)
    cmd = [
        str(PG_BIN / "initdb"),
        "-D",
        str(pgdata),
        "-U",
        PG_USER,
        "--auth=scram-sha-256",
        f"--pwfile={pwfile}",
        "-E",
        "UTF8",
        "--no-instructions",
    ]
    try:
        done = subprocess.run(cmd, user=user, cwd="/", capture_output=True, text=True, timeout=300)
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        hint = f" (can user {user} reach {pgdata}? every parent folder needs o+x)" if user else ""
        raise ClusterError(f"initdb failed: {tail[0] if tail else done.returncode}{hint}")


def postgres_cmd(pgdata: Path, port: int) -> list[str]:
    """The server on 127.0.0.1:port only (no Unix socket: nothing outside this data folder is touched)."""
    return [
        str(PG_BIN / "postgres"),
        "-D",
        str(pgdata),
        "-p",
        str(port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]


def pg_connect(port: int, password: str, dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host="127.0.0.1", port=port, user=PG_USER, password=password, dbname=dbname, connect_timeout=3
    )


def create_databases(port: int, password: str, names: tuple[str, ...]) -> None:
    conn = pg_connect(port, password)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def pg_url(driver: str, port: int, password: str, dbname: str) -> str:
    return f"postgresql+{driver}://{PG_USER}:{password}@127.0.0.1:{port}/{dbname}"
