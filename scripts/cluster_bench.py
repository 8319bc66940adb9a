#!/usr/bin/env python
"""Speed-up of a fanned-out search: the same study with 1 and with 2 (or more) workers on a running
cluster (make cluster-up), each from an empty study, interleaved and repeated.

    python scripts/cluster_bench.py [--workers 1 2] [--repeat 2] [--stage classify] [-S key=value ...]

Default search: classify on the smoke profile with the whole training split, 12 trials of 2 epochs
(no trial is pruned before epoch 2, so every trial does the same work whichever worker draws it).
Per run it records the coordinator's search time (dispatch of the search runs until all are final:
flow-run start-up included), the span from the first trial's start to the last trial's end, the trial
count and the 1-minute load average before and after. Writes reports/cluster_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["classify.train_fraction=1.0", "classify.n_trials=12", "classify.search_epochs=2"]


def load_env(folder: Path) -> None:
    """The cluster's client settings (<dir>/env) into this process."""
    env = folder / "env"
    if not env.exists():
        sys.exit(f"cluster_bench: {env} not found: start the stack first (make cluster-up)")
    for line in env.read_text().splitlines():
        key, value = re.match(r"export (\w+)='(.*)'", line).groups()
        os.environ[key] = value


def reset_studies(flag: str, stage: str) -> list[str]:
    """Delete the stage's studies so every run starts from an empty one."""
    import optuna

    storage = os.environ["MEDGEN_OPTUNA_STORAGE"]
    names = [
        s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(f"{flag}-{stage}-")
    ]
    for name in names:
        optuna.delete_study(study_name=name, storage=storage)
    return names


def run_fanout(api: str, parameters: dict[str, Any], timeout_s: float) -> str:
    """Start medgen-fanout/breastmnist with `parameters`, wait for it; returns its final state type."""
    import httpx

    deployment = httpx.get(f"{api}/deployments/name/medgen-fanout/breastmnist", timeout=10).json()
    run = httpx.post(
        f"{api}/deployments/{deployment['id']}/create_flow_run", json={"parameters": parameters}, timeout=10
    ).json()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10).json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state
        time.sleep(2)
    return "TIMEOUT"


def db_counters(folder: Path) -> dict[str, dict[str, int]]:
    """PostgreSQL's cumulative counters per database (commits, rows read/written): round-trips per trial."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from cluster_procs import pg_connect

    state = json.loads((folder / "state.json").read_text())
    conn = pg_connect(state["pg_port"], (folder / "pgpassword").read_text().strip())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush()")  # PG 15: this backend's stats, now
            cur.execute(
                "SELECT datname, xact_commit, tup_returned + tup_fetched,"
                " tup_inserted + tup_updated + tup_deleted"
                " FROM pg_stat_database WHERE datname IN ('optuna', 'mlflow')"
            )
            return {name: {"commits": c, "rows_read": r, "rows_written": w} for name, c, r, w in cur.fetchall()}
    finally:
        conn.close()


def artifact_bytes(folder: Path) -> int:
    """Bytes under the MLflow server's artifact store (every upload goes through the server: proxied)."""
    return sum(p.stat().st_size for p in (folder / "artifacts").rglob("*") if p.is_file())


def per_trial(before: dict, after: dict, trials: int) -> dict[str, dict[str, float]]:
    return {db: {k: round((after[db][k] - before[db][k]) / max(trials, 1), 1) for k in after[db]} for db in after}


def measured(flag: str, stage: str) -> dict[str, Any]:
    """The latest fan-out parent run's timings and its study's trials."""
    import mlflow
    import optuna

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(f"medgen/{flag}/{stage}")
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        "tags.`medgen.front_door` = 'fanout'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    storage = os.environ["MEDGEN_OPTUNA_STORAGE"]
    trials = [
        t
        for s in optuna.get_all_study_summaries(storage)
        if s.study_name.startswith(f"{flag}-{stage}-")
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
        if t.datetime_complete
    ]
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    return {
        "search_s": parent.data.metrics["seconds_search"],
        "finish_s": parent.data.metrics["seconds_finish"],
        "trial_span_s": round(span.total_seconds(), 1),
        "trials": len(trials),
        "trial_mean_s": round(sum((t.duration.total_seconds() for t in trials), 0.0) / len(trials), 2),
        "owners": len({t.user_attrs.get("owner") for t in trials}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / ".cluster"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--stage", default="classify")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("-S", dest="overrides", action="append", default=None, help="override (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "cluster_bench.json"))
    args = parser.parse_args(argv)
    load_env(Path(args.dir))
    overrides = args.overrides if args.overrides is not None else DEFAULT
    rows = []
    for repeat in range(args.repeat):
        for workers in args.workers:  # interleaved, so a change in the machine's load hits every count
            reset_studies("breastmnist", args.stage)
            folder = Path(args.dir)
            load_before, counters, stored = os.getloadavg()[0], db_counters(folder), artifact_bytes(folder)
            params = {"stage": args.stage, "workers": workers, "profile": args.profile, "overrides": overrides}
            state = run_fanout(os.environ["PREFECT_API_URL"], params, timeout_s=3600)
            row = {
                "repeat": repeat,
                "workers": workers,
                "state": state,
                "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
            if state == "COMPLETED":  # whole fan-out (finishing run included) per trial
                row.update(measured("breastmnist", args.stage))
                row["db_per_trial"] = per_trial(counters, db_counters(folder), row["trials"])
                row["artifact_bytes"] = artifact_bytes(folder) - stored
            print(json.dumps(row), flush=True)
            rows.append(row)
    report = {
        "stage": args.stage,
        "profile": args.profile,
        "overrides": overrides,
        "cpus": os.cpu_count(),
        "runs": rows,
        "summary": summarize(rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))
    return 0 if all(r["state"] == "COMPLETED" for r in rows) else 1


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean search time and trial span per worker count, and the ratios to the smallest count."""
    done = [r for r in rows if r["state"] == "COMPLETED"]
    counts = sorted({r["workers"] for r in done})
    mean = {
        w: {
            k: sum(r[k] for r in done if r["workers"] == w) / sum(1 for r in done if r["workers"] == w)
            for k in ("search_s", "trial_span_s")
        }
        for w in counts
    }
    base = counts[0] if counts else None
    return {
        str(w): {
            **{k: round(v, 1) for k, v in m.items()},
            "speedup_search": round(mean[base]["search_s"] / m["search_s"], 2),
            "speedup_trials": round(mean[base]["trial_span_s"] / m["trial_span_s"], 2),
        }
        for w, m in mean.items()
    }


if __name__ == "__main__":
    sys.exit(main())
