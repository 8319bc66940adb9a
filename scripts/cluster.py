#!/usr/bin/env python
"""The multi-worker stack on one machine, 127.0.0.1 only: PostgreSQL, an MLflow server on it (artifacts
proxied), a Prefect server on it, the work pools with their deployments, and N Prefect workers, each
with its own MEDGEN_WORKER_ID. Started as one, stopped as one (make cluster-up / make cluster-down).

    python scripts/cluster.py up [--workers 2] [--dir .cluster] [--workdir DIR] [--detach]
    python scripts/cluster.py down [--dir .cluster] [--purge]
    python scripts/cluster.py status [--dir .cluster]

`up` picks free loopback ports, prints the URLs, writes <dir>/env (`source` it: PREFECT_API_URL,
MLFLOW_TRACKING_URI, MEDGEN_OPTUNA_STORAGE, PREFECT_HOME) and <dir>/state.json (every PID it started),
then waits. Ctrl-C, SIGTERM or `down` stop everything it started, by PID (checked against the process
start time, so a reused PID is never hit): workers first, PostgreSQL last. PostgreSQL's data stays in
<dir>/pgdata (studies and runs survive a restart; `down --purge` deletes <dir>). Flow runs execute in
--workdir (default <dir>/work: a copy of params.yaml and flows/, so a smoke run never overwrites the
checkout's outputs; `--workdir .` writes them where `dvc repro` does). Logs: <dir>/logs/.
As root, PostgreSQL runs as the `postgres` user (it refuses root); <dir> must be reachable by it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_procs import (
    ClusterError,
    alive,
    create_databases,
    free_port,
    http_ok,
    init_postgres,
    pg_connect,
    pg_os_user,
    pg_url,
    postgres_cmd,
    spawn,
    started_at,
    stop_together,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL, CONTROL_POOL = "medgen", "medgen-control"
CORE = ("postgres", "mlflow", "prefect-server")  # one of these gone: the stack is down
# Never handed to the stack: they would nest its runs or point it at another store.
_STRIP = (
    "MLFLOW_RUN_ID",
    "MEDGEN_PARENT_RUN_ID",
    "MEDGEN_WORKER_ID",
    "PREFECT_API_URL",
    "MLFLOW_TRACKING_URI",
    "MEDGEN_OPTUNA_STORAGE",
    "PREFECT_PROFILE",
)


class Stack:
    """What `up` started, in start order, and where it lives."""

    def __init__(self, folder: Path, workdir: Path, workers: int) -> None:
        self.folder, self.workdir, self.workers = folder, workdir, workers
        self.logs = folder / "logs"
        self.procs: list[dict[str, Any]] = []
        self.urls: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.pg_port = 0

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, user: str | None = None) -> None:
        self.procs.append(spawn(name, cmd, env, self.logs, cwd, user))
        self.save(ready=False)

    def save(self, ready: bool) -> None:
        state = {
            "supervisor": {"pid": os.getpid(), "started": started_at(os.getpid())},
            "ready": ready,
            "processes": self.procs,
            "urls": self.urls,
            "workdir": str(self.workdir),
            "workers": self.workers,
            "pg_port": self.pg_port,
        }
        _write_private(self.folder / "state.json", json.dumps(state, indent=2))

    def stop_all(self) -> None:
        stop_in_order(self.procs, report=True)
        (self.folder / "state.json").unlink(missing_ok=True)


def stop_in_order(procs: list[dict[str, Any]], report: bool = False) -> None:
    """The Prefect workers (workers and control) together, then the servers one by one, last started first."""
    workers = [e for e in procs if e["name"] == "control" or e["name"].startswith("worker-")]
    groups = [workers] if workers else []
    groups += [[e] for e in reversed(procs) if e not in workers]
    for group in groups:
        started = time.monotonic()
        stop_together(group)
        seconds = time.monotonic() - started
        if report:
            names = ", ".join(f"{e['name']} (pid {e['pid']})" for e in group)
            print(f"cluster: {names} stopped in {seconds:.1f} s", flush=True)


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (the URLs carry the database password)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def prepare_workdir(workdir: Path) -> None:
    """The sandbox flow runs execute in: params.yaml and flows/ copied from this checkout (refreshed)."""
    if workdir.resolve() == ROOT:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "params.yaml", workdir / "params.yaml")
    shutil.rmtree(workdir / "flows", ignore_errors=True)
    shutil.copytree(ROOT / "flows", workdir / "flows", ignore=shutil.ignore_patterns("__pycache__"))


def start_postgres(stack: Stack) -> tuple[int, str]:
    """initdb (first time), the server on a free port, the three databases; returns (port, password)."""
    secret = stack.folder / "pgpassword"
    if not secret.exists():
        _write_private(secret, secrets.token_urlsafe(24))
    password = secret.read_text().strip()
    user = pg_os_user()
    pgdata = stack.folder / "pgdata"
    init_postgres(pgdata, password, user)
    port = stack.pg_port = free_port()
    stack.start("postgres", postgres_cmd(pgdata, port), dict(os.environ), Path("/"), user)
    wait_until("PostgreSQL", lambda: pg_connect(port, password).close() is None, 60, stack.logs)
    create_databases(port, password, ("optuna", "mlflow", "prefect"))
    stack.urls["postgres"] = f"postgresql://medgen@127.0.0.1:{port} (password in {secret})"
    return port, password


def client_env(stack: Stack, port: int, password: str) -> dict[str, str]:
    """What every client of the stack needs (written to <dir>/env for the user's shell)."""
    return {
        "PREFECT_API_URL": stack.urls["prefect"] + "/api",
        "PREFECT_HOME": str(stack.folder / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": stack.urls["mlflow"],
        "MEDGEN_OPTUNA_STORAGE": pg_url("psycopg2", port, password, "optuna"),
    }


def start_servers(stack: Stack, base: dict[str, str], port: int, password: str) -> None:
    """MLflow (backend in PostgreSQL, artifacts proxied from <dir>/artifacts) and Prefect (on PostgreSQL)."""
    mlflow_port, prefect_port = free_port(), free_port()
    stack.urls["mlflow"] = f"http://127.0.0.1:{mlflow_port}"
    stack.urls["prefect"] = f"http://127.0.0.1:{prefect_port}"
    # No job runner: it serves MLflow's GenAI jobs (none here) with 7 huey consumer processes that take
    # ~20 s to stop; on a 2-core box every idle process costs.
    mlflow_env = {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    backend = pg_url("psycopg2", port, password, "mlflow")
    stack.start(
        "mlflow",
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--serve-artifacts",
            "--artifacts-destination",
            str(stack.folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        mlflow_env,
        stack.folder,
    )
    prefect_env = {
        **base,
        "PREFECT_HOME": str(stack.folder / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": pg_url("asyncpg", port, password, "prefect"),
    }
    stack.start(
        "prefect-server",
        [
            str(BIN / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(prefect_port),
            "--analytics-off",
        ],
        prefect_env,
        stack.folder,
    )
    wait_until("MLflow server", lambda: http_ok(stack.urls["mlflow"] + "/health"), 120, stack.logs)
    wait_until("Prefect server", lambda: http_ok(stack.urls["prefect"] + "/api/health"), 120, stack.logs)


def start_workers(stack: Stack, env: dict[str, str]) -> None:
    """Register the deployments (creating the pools), then N compute workers (one flow run each, one CPU
    thread each, MEDGEN_WORKER_ID=i) and one control worker for the coordinators."""
    deploy = [
        str(BIN / "python"),
        "flows/deploy.py",
        "--pool",
        POOL,
        "--control-pool",
        CONTROL_POOL,
        "--source",
        str(stack.workdir),
    ]
    done = subprocess.run(deploy, env=env, cwd=stack.workdir, capture_output=True, text=True, timeout=300)
    (stack.logs / "deploy.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise ClusterError(f"flows/deploy.py failed (see {stack.logs / 'deploy.log'})")
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    worker = [str(BIN / "prefect"), "worker", "start", "--type", "process", "--limit", "1"]
    for i in range(stack.workers):
        stack.start(
            f"worker-{i}",
            [*worker, "--pool", POOL, "--name", f"worker-{i}"],
            {**env, **threads, "MEDGEN_WORKER_ID": str(i)},
            stack.workdir,
        )
    stack.start(
        "control",
        [*worker[:-1], "4", "--pool", CONTROL_POOL, "--name", "control"],
        {**env, **threads, "MEDGEN_WORKER_ID": str(stack.workers)},
        stack.workdir,
    )
    wait_until(
        f"{stack.workers} workers online",
        lambda: online_workers(stack.urls["prefect"], POOL) >= stack.workers,
        120,
        stack.logs,
    )


def online_workers(prefect_url: str, pool: str) -> int:
    import httpx

    reply = httpx.post(f"{prefect_url}/api/work_pools/{pool}/workers/filter", json={}, timeout=5)
    return sum(1 for w in reply.json() if w.get("status") == "ONLINE")


def up(stack: Stack) -> dict[str, str]:
    """Start everything; returns the client environment. On any failure what was started is stopped."""
    stack.folder.mkdir(parents=True, exist_ok=True)
    stack.logs.mkdir(exist_ok=True)
    prepare_workdir(stack.workdir)
    base = {k: v for k, v in os.environ.items() if k not in _STRIP}
    port, password = start_postgres(stack)
    start_servers(stack, base, port, password)
    stack.env = client_env(stack, port, password)
    path = os.pathsep.join(filter(None, [str(stack.workdir), base.get("PYTHONPATH")]))
    env = {**base, **stack.env, "PYTHONPATH": path}
    start_workers(stack, env)
    _write_private(stack.folder / "env", "".join(f"export {k}='{v}'\n" for k, v in stack.env.items()))
    return env


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (cluster-down) stops the stack like Ctrl-C


def supervise(stack: Stack) -> int:
    """Block until Ctrl-C/SIGTERM (0) or until a core service dies (1)."""
    try:
        while True:
            dead = [p["name"] for p in stack.procs if p["name"] in CORE and not alive(p)]
            if dead:
                print(f"cluster: {', '.join(dead)} exited (see {stack.logs}); stopping the rest", file=sys.stderr)
                return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0


def summary(stack: Stack) -> str:
    lines = [f"cluster: up with {stack.workers} worker(s); flow runs execute in {stack.workdir}"]
    lines += [f"  {name:8s} {url}" for name, url in stack.urls.items()]
    lines += [
        f"  shell:   source {stack.folder / 'env'}",
        f"  logs:    {stack.logs}",
        "  e.g.:    prefect deployment run 'medgen-fanout/breastmnist' -p stage=classify -p workers=2 "
        "-p profile=smoke --watch",
        "  stop:    Ctrl-C here, or make cluster-down",
    ]
    return "\n".join(lines)


def read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def cmd_up(args: argparse.Namespace) -> int:
    folder = Path(args.dir).resolve()
    state = read_state(folder)
    if state and alive(state["supervisor"]):
        pid = state["supervisor"]["pid"]
        raise ClusterError(f"a cluster already runs from {folder} (pid {pid}): make cluster-down")
    if args.detach:
        return detach(args, folder)
    stack = Stack(folder, Path(args.workdir or folder / "work").resolve(), args.workers)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 1
    try:
        up(stack)
        print(summary(stack), flush=True)
        stack.save(ready=True)
        code = supervise(stack)
    except KeyboardInterrupt:
        print("cluster: interrupted while starting", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        print("cluster: stopping " + ", ".join(p["name"] for p in reversed(stack.procs)), flush=True)
        stack.stop_all()
        print("cluster: stopped", flush=True)
    return code


def detach(args: argparse.Namespace, folder: Path) -> int:
    """Run `up` in the background (its own session, output in <dir>/logs/cluster.log) and return once ready."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "state.json").unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "up", "--dir", str(folder), "--workers", str(args.workers)]
    cmd += ["--workdir", args.workdir] if args.workdir else []
    with open(folder / "logs" / "cluster.log", "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    while proc.poll() is None:
        state = read_state(folder)
        if state and state.get("ready"):
            text = (folder / "logs" / "cluster.log").read_text()
            print(text[text.rfind("cluster: up") :].rstrip())
            return 0
        time.sleep(1)
    raise ClusterError(f"the stack did not come up (see {folder / 'logs' / 'cluster.log'})")


def cmd_down(args: argparse.Namespace) -> int:
    folder = Path(args.dir).resolve()
    state = read_state(folder)
    if state is None:
        print(f"cluster: nothing running from {folder}")
    elif alive(state["supervisor"]):
        os.kill(state["supervisor"]["pid"], signal.SIGTERM)  # it stops its children itself, in order
        deadline = time.monotonic() + 120
        while alive(state["supervisor"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        print("cluster: stopped")
    else:  # the supervisor died (kill -9): stop what it recorded
        stop_in_order(state["processes"])
        (folder / "state.json").unlink(missing_ok=True)
        print("cluster: stopped (supervisor was gone)")
    if args.purge and folder.exists():
        shutil.rmtree(folder)
        print(f"cluster: removed {folder}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = read_state(Path(args.dir).resolve())
    if state is None:
        print("cluster: not running")
        return 1
    for entry in [state["supervisor"] | {"name": "supervisor"}, *state["processes"]]:
        print(f"  {entry['name']:15s} pid {entry['pid']:>7}  {'running' if alive(entry) else 'gone'}")
    for name, url in state["urls"].items():
        print(f"  {name:15s} {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status"):
        command = sub.add_parser(name)
        command.add_argument("--dir", default=str(ROOT / ".cluster"), help="state, logs and data (git-ignored)")
    sub.choices["up"].add_argument("--workers", type=int, default=2, help="compute workers (default 2)")
    sub.choices["up"].add_argument("--workdir", default=None, help="where flow runs execute (default <dir>/work)")
    sub.choices["up"].add_argument("--detach", action="store_true", help="run in the background; return once ready")
    sub.choices["down"].add_argument("--purge", action="store_true", help="also delete <dir> (database included)")
    args = parser.parse_args(argv)
    if args.command == "up" and args.workers < 1:
        parser.error("--workers must be >= 1")
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)
    except ClusterError as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
