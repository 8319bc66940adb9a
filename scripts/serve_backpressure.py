"""Back-pressure benchmark of the medgen service on loopback (a script, not a test): `make bench-backpressure`.

    python scripts/serve_backpressure.py [--model-dir DIR] [--seconds 20] [--keys 8] [--max-inflight N]
                                         [--runs polite,impatient,saturation] [--server-cpus 0 --client-cpus 1]
                                         [--standin DIR]   (a timing stand-in instead of models/export)

1. unloaded: one client, one 28x28 PNG per /classify request -> p50/p99 (the reference p99);
2. capacity: as many closed-loop clients as the in-flight bound (so none is refused), no rate limit and no wait
   budget (MEDGEN_MAX_WAIT_MS at its maximum) -> the
   requests/s the service completes (an earlier version used 32 clients that retried 503s after 10 ms: the
   refusals ate CPU and the figure came out below the single-client rate, which made the limits lower);
3. fair use: a server with --keys API keys, each limited to rate = `--load` x capacity / keys (so the sum is
   below capacity); 32 and 128 clients spread over the keys, for `--seconds` each, twice: clients that wait
   the Retry-After they are given ("polite") and clients that retry after 10 ms ("impatient");
4. saturation: no rate limit, 128 impatient clients against the in-flight bound (503s).
Per run: admitted p50/p99, refused share by status, refusal latency, every other outcome by kind (other
statuses, connection errors), and where the time went: server CPU (its process tree, from /proc) and client CPU
per request, the load average, and the admitted p99 of the requests sent in the run's first second vs the rest.
--server-cpus/--client-cpus pin the server and this load generator to disjoint cores (taskset-style affinity):
a stand-in for "clients on another host" that still shares the memory bus and the kernel; every run of a report
uses the same pinning, the unloaded reference included.
Target (issue #22): admitted p99 <= 2 x unloaded p99 at 128, every refusal a 429/503 answered within 100 ms,
zero other errors. Writes reports/serve_backpressure.json and prints a table.
Every loop is bounded by its clock and a request cap; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench as bench  # noqa: E402  (the server start/stop and image helpers)

from serving.settings import DEFAULTS

OFF_MS = 600_000  # the highest MEDGEN_MAX_WAIT_MS: no wait budget in practice
MAX_REQUESTS = 200_000  # per run, besides the clock
RUNS = ("polite", "impatient", "saturation")  # besides "unloaded" and "capacity", which every report needs
LOOP = ["auto"]  # the load generator's event loop (--loop)


def runs_list(text: str) -> tuple[str, ...]:
    chosen = tuple(r.strip() for r in text.split(",") if r.strip())
    if not chosen or set(chosen) - set(RUNS):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(RUNS)}")
    return chosen


def cpu_list(text: str) -> set[int]:
    try:
        cpus = {int(c) for c in text.split(",") if c.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError("expected core numbers, e.g. 0 or 0,1") from None
    if not cpus or not cpus <= os.sched_getaffinity(0):
        raise argparse.ArgumentTypeError(f"cores must be among {sorted(os.sched_getaffinity(0))}")
    return cpus


def loop_name() -> str:
    if LOOP[0] == "auto":
        try:
            import uvloop  # noqa: F401  (optional: the service's own event loop when installed)

            return "uvloop"
        except ImportError:
            pass
    return "asyncio"


def run(coroutine: Any) -> Any:
    """asyncio.run on the chosen event loop (--loop), after freezing what is alive now out of the garbage collector
    (a full collection of this process's heap is tens of ms: a pause that would count as server latency)."""
    gc.collect()
    gc.freeze()
    if loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    return asyncio.run(coroutine)


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by process `root` and its descendants (Linux /proc)."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:  # the process ended meanwhile
                continue
            stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, grown = {root}, True
    while grown:
        grown = False
        for pid, (ppid, _) in stats.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grown = True
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def after_first_second(latencies: list[float], sent_at: list[float]) -> list[float]:
    """The latencies of the requests sent once the run's first second (the connection wave) was over."""
    return [latency for latency, at in zip(latencies, sent_at) if at >= 1.0]


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    ms = np.array(values) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


class Connection:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams: a benchmark client must cost far less CPU than
    the server it measures (httpx spent ~3 ms per request here, more than the refusals it was timing)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, dict[str, str]]:
        """Send one request (head already formatted), return (status, headers); the body is read and dropped."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(head + body)
        await self.writer.drain()
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
        await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(status_line.split()[1]), headers

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def request_head(payload: bytes, key: str | None) -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n{auth}"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()


@dataclass
class Tally:
    """What the clients of one run saw: latencies and send times (seconds from the start) by outcome, every other
    outcome counted by kind (statuses, exception names) with the first few errors spelled out."""

    start: float
    admitted: list[float] = field(default_factory=list)
    admitted_at: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)
    refused_at: list[float] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def summary(self, wall: float) -> dict[str, Any]:
        total = sum(self.outcomes.values())
        first = [latency for latency, at in zip(self.admitted, self.admitted_at) if at < 1.0]
        return {
            "seconds": round(wall, 1),
            "requests": total,
            "admitted": len(self.admitted),
            "admitted_per_s": round(len(self.admitted) / wall, 1),
            "admitted_latency": percentiles(self.admitted),
            "refused_share": {s: round(self.outcomes[s] / total, 3) for s in ("429", "503") if total},
            "refusal_latency": percentiles(self.refused),
            "refusal_latency_after_first_second": percentiles(after_first_second(self.refused, self.refused_at)),
            "other_outcomes": {k: v for k, v in self.outcomes.items() if k not in ("200", "429", "503")},
            "first_errors": self.first_errors,
            "admitted_first_second": {"n": len(first), **percentiles(first)},
            "admitted_after_first_second": {
                "n": len(self.admitted) - len(first),
                **percentiles(after_first_second(self.admitted, self.admitted_at)),
            },
        }


async def drive(
    url: str,
    payload: bytes,
    keys: list[str],
    concurrency: int,
    seconds: float,
    retry_wait: float | None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """`concurrency` closed-loop clients (client i uses key i mod len(keys)); retry_wait None = honour Retry-After."""
    host, port = url.removeprefix("http://").split(":")
    deadline = time.perf_counter() + seconds
    tally = Tally(start=time.perf_counter())

    async def client(i: int) -> None:
        head, connection = request_head(payload, keys[i % len(keys)] if keys else None), Connection(host, int(port))
        while time.perf_counter() < deadline and sum(tally.outcomes.values()) < MAX_REQUESTS:
            t0 = time.perf_counter()
            try:
                status, headers = await asyncio.wait_for(connection.request(head, payload), timeout=30)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                tally.outcomes[type(exc).__name__] += 1  # resets, timeouts: counted by kind, never hidden
                if len(tally.first_errors) < 5:
                    tally.first_errors.append(repr(exc)[:200])
                await connection.close()
                continue
            elapsed = time.perf_counter() - t0
            tally.outcomes[str(status)] += 1
            if status == 200:
                tally.admitted.append(elapsed)
                tally.admitted_at.append(t0 - tally.start)
            elif status in (429, 503):
                tally.refused.append(elapsed)
                tally.refused_at.append(t0 - tally.start)
                # polite clients wait the Retry-After plus up to half a second of jitter (no synchronised herd)
                wait = retry_wait
                if wait is None:  # jitter for a benchmark client, not a secret (hence the nosec)
                    wait = float(headers.get("retry-after", 1)) + random.uniform(0, 0.5)  # nosec B311
                await asyncio.sleep(min(wait, max(0.0, deadline - time.perf_counter())))
        await connection.close()

    load_before, server_cpu, client_cpu = (
        os.getloadavg()[0],
        tree_cpu_s(server_pid) if server_pid else 0.0,
        time.process_time(),
    )
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - tally.start
    server_cpu = tree_cpu_s(server_pid) - server_cpu if server_pid else None
    result = {
        "concurrency": concurrency,
        **tally.summary(wall),
        "healthy_after": bench_healthy(url),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return result | cpu_use(server_cpu, time.process_time() - client_cpu, result["requests"], wall)


def cpu_use(server_s: float | None, client_s: float, requests: int, wall: float) -> dict[str, Any]:
    """CPU per request (ms) and as a share of the wall time, server (None when not measured) and client."""
    per = {"client": round(1000 * client_s / max(requests, 1), 3), "server": None}
    share = {"client": round(client_s / wall, 3), "server": None}
    if server_s is not None:
        per["server"], share["server"] = round(1000 * server_s / max(requests, 1), 3), round(server_s / wall, 3)
    return {"cpu_ms_per_request": per, "cpu_share_of_wall": share}


def bench_healthy(url: str) -> bool:
    import urllib.request

    try:  # the loopback URL of the server this script started
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:  # nosec B310
            return response.status == 200
    except OSError:
        return False


def export_standin(folder: Path) -> Path:
    """folder/export: the classifier the full profile trains (ResNet-18 with params.yaml's classify.stem, 1 channel)
    with seeded random weights, and tests.standins' small generator, exported and parity-checked by the export
    stage's own code with its manifest. For timing only: a 28x28 image costs the same whatever the weights."""
    import torch

    from medgen import data, manifest
    from medgen.params import load_config
    from medgen.stages import classify, export
    from medgen.training import save_model
    from tests.standins import CLASS_NAMES, save_generator

    torch.set_num_threads(1)
    cfg = load_config(
        bench.ROOT / "params.yaml",
        overrides=[
            f"export.classifier_checkpoint={folder / 'classifier.pt'}",
            f"export.generator_checkpoint={folder / 'gen.pt'}",
            f"export.augmented_checkpoint={folder / 'absent.pt'}",
            f"export.out_dir={folder / 'export'}",
        ],
    )
    prepared = bench.ROOT / cfg.data.prepared_path
    real, _ = data.to_tensors(data.load_npz(prepared if prepared.exists() else cfg.data.source_path(), cfg.data).test)
    torch.manual_seed(cfg.seed)
    model, kwargs = classify.build_model(cfg.classify, 2, tuple(real.shape[1:]))
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, as after training
        model(real[:64])
    model.eval()
    config = {
        "n_classes": 2,
        "class_names": CLASS_NAMES,
        "input_size": int(real.shape[-1]),
        "input_shape": list(real.shape[1:]),
        "run_id": "",
    }
    save_model(cfg.export.classifier_checkpoint, model, kwargs, config=config, metrics={})
    save_generator(cfg.export.generator_checkpoint)
    for target in export.targets(cfg):
        export.export_one(target, cfg, real.numpy())
    manifest.write(cfg, cfg.export.out_dir)
    return Path(cfg.export.out_dir)


def serve(args: argparse.Namespace, **env: str):
    """The service with the in-flight bound of --max-inflight (default: the service's default), on --server-cpus.

    The server inherits this process's CPU affinity at its start; this process then moves to --client-cpus."""
    if args.server_cpus:
        os.sched_setaffinity(0, args.server_cpus)
    try:
        settings = {"MEDGEN_MAX_INFLIGHT": str(args.max_inflight), "MEDGEN_MAX_WAIT_MS": str(args.max_wait_ms)}
        process, url = bench.start_server(args.model_dir, **{**settings, **env})
    finally:
        if args.client_cpus:
            os.sched_setaffinity(0, args.client_cpus)
    return process, url


def fair_use(args: argparse.Namespace, payload: bytes, report: dict[str, Any]) -> None:
    """8 keys (--keys) whose rates sum to --load x the measured capacity; polite and/or impatient clients."""
    capacity = report["capacity"]["admitted_per_s"]
    keys = [secrets.token_urlsafe(24) for _ in range(args.keys)]
    rate = max(0.5, args.load * capacity / args.keys)
    report["rate_settings"] = {
        "keys": args.keys,
        "rate_per_s_per_key": round(rate, 2),
        "burst": max(1, round(rate)),
        "sum_of_rates": round(rate * args.keys, 1),
        "capacity_per_s": capacity,
    }
    process, url = serve(
        args,
        MEDGEN_API_KEYS=",".join(keys),
        MEDGEN_RATE_PER_S=f"{rate:.3f}",
        MEDGEN_RATE_BURST=str(max(1, round(rate))),
    )
    try:
        for name, wait in (("polite", None), ("impatient", 0.01)):
            for concurrency in (32, 128) if name in args.runs else ():
                runner = drive(url, payload, keys, concurrency, args.seconds, wait, process.pid)
                report[f"fair_use_{name}_{concurrency}"] = run(runner)
    finally:
        bench.stop_server(process)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    payload = bench.png_bytes(bench.real_images(1)[0])
    report: dict[str, Any] = {
        "machine": bench.machine(),
        "payload": "one real 28x28 PNG per POST /classify",
        "max_inflight": args.max_inflight,
        "max_wait_ms": args.max_wait_ms,
        "server_cpus": sorted(args.server_cpus or []),
        "client_cpus": sorted(args.client_cpus or []),
        "event_loop": loop_name(),
    }
    process, url = serve(args, MEDGEN_MAX_WAIT_MS=str(OFF_MS))  # capacity: what the machine completes, no budget
    try:
        run(drive(url, payload, [], 4, 3, 0.01))  # warm-up
        report["unloaded"] = run(drive(url, payload, [], 1, args.seconds, 0.01, process.pid))
        report["capacity"] = run(drive(url, payload, [], args.max_inflight, args.seconds, 0.01, process.pid))
    finally:
        bench.stop_server(process)
    fair_use(args, payload, report)
    if "saturation" in args.runs:
        process, url = serve(args)  # no rate limit: only the in-flight bound stands
        try:
            report["saturation_128"] = run(drive(url, payload, [], 128, args.seconds, 0.01, process.pid))
        finally:
            bench.stop_server(process)
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, each checked against the measured numbers."""
    reference = report["unloaded"]["admitted_latency"]["p99_ms"]
    runs = {k: v for k, v in report.items() if k.startswith(("fair_use_", "saturation_")) and "concurrency" in v}
    p99_128 = {k: v["admitted_latency"]["p99_ms"] for k, v in runs.items() if v["concurrency"] == 128}
    return {
        "unloaded_p99_ms": reference,
        "admitted_p99_at_128_within_2x_unloaded": {k: p is not None and p <= 2 * reference for k, p in p99_128.items()},
        "refusals_within_100ms_p99": {k: (v["refusal_latency"]["p99_ms"] or 0) <= 100 for k, v in runs.items()},
        "no_other_outcomes": all(not v["other_outcomes"] for v in runs.values()),
        "healthy_after_every_run": all(v["healthy_after"] for v in runs.values()),
    }


def table(report: dict[str, Any]) -> str:
    rows = [
        "| run | clients | requests | admitted/s | admitted p50 / p99 ms | p99 after 1st s | 429 share | 503 share "
        "| refusal p99 ms (after 1st s) | other | CPU ms/req server / client | load 1m |",
        "|---" * 12 + "|",
    ]
    for name, result in report.items():
        if not isinstance(result, dict) or "admitted_latency" not in result:
            continue
        lat, share, cpu = result["admitted_latency"], result["refused_share"], result["cpu_ms_per_request"]
        rows.append(
            f"| {name} | {result['concurrency']} | {result['requests']} | {result['admitted_per_s']} | "
            f"{lat['p50_ms']} / {lat['p99_ms']} | {result['admitted_after_first_second']['p99_ms']} | "
            f"{share.get('429', 0)} | {share.get('503', 0)} | {result['refusal_latency']['p99_ms']} "
            f"({result['refusal_latency_after_first_second']['p99_ms']}) | "
            f"{result['other_outcomes'] or 0} | {cpu['server']} / {cpu['client']} | "
            f"{result['load_avg_1m'][0]}-{result['load_avg_1m'][1]} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: export.out_dir from params.yaml")
    parser.add_argument(
        "--standin",
        type=Path,
        default=None,
        help="export a timing stand-in (the full profile's ResNet-18, random weights) to this folder "
        "and benchmark it instead of --model-dir",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each run")
    parser.add_argument("--keys", type=int, default=8, help="API keys the clients are spread over")
    parser.add_argument("--load", type=float, default=0.5, help="sum of the per-key rates as a share of capacity")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=DEFAULTS["max_inflight"],
        help="MEDGEN_MAX_INFLIGHT of every server started (default: the service's default)",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=int,
        default=DEFAULTS["max_wait_ms"],
        help="MEDGEN_MAX_WAIT_MS of every server but the capacity run's (default: the service's, 0 = auto)",
    )
    parser.add_argument("--runs", type=runs_list, default=RUNS, help=f"comma-separated subset of {','.join(RUNS)}")
    parser.add_argument("--server-cpus", type=cpu_list, default=None, help="e.g. 0: pin the server to these cores")
    parser.add_argument("--client-cpus", type=cpu_list, default=None, help="e.g. 1: pin this load generator there")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio"),
        default="auto",
        help="the load generator's event loop: auto = uvloop when installed (cheaper per request)",
    )
    parser.add_argument("--out", type=Path, default=bench.ROOT / "reports" / "serve_backpressure.json")
    args = parser.parse_args(argv)
    if bool(args.server_cpus) != bool(args.client_cpus) or set(args.server_cpus or ()) & set(args.client_cpus or ()):
        parser.error("--server-cpus and --client-cpus go together and must not overlap")
    LOOP[0] = args.loop
    if args.standin is not None:
        args.model_dir = export_standin(args.standin)
    elif args.model_dir is None:
        from medgen.params import load_config

        args.model_dir = bench.ROOT / load_config(bench.ROOT / "params.yaml").export.out_dir
    report = run_all(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(table(report))
    print(json.dumps(report["rate_settings"]), json.dumps(report["verdict"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
