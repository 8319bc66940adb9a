"""Benchmark and load test of the medgen service on loopback (a script, not a test).

    python scripts/serve_bench.py bench   # make bench-serve: /classify p50/p99 + throughput at concurrency
                                          # 1, 8, 32 vs in-process onnxruntime -> reports/serve_bench.json
    python scripts/serve_bench.py load    # make load-serve: 60 s of mixed good and bad requests at
                                          # concurrency 16 -> reports/serve_load.json; exit 1 on any error

Both start their own `bentoml serve serving.service:MedGen` on a free 127.0.0.1 port over the models in
export.out_dir (params.yaml) or --model-dir, and stop it afterwards. Every loop is bounded (request
count and wall time); nothing leaves the loopback interface.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WARM_UP_TIMEOUT_S = 600.0
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from medgen.cli import serve_command  # noqa: E402
from serving import runtime  # noqa: E402  (after the path set-up above)
from serving.settings import DEFAULTS


def real_images(n: int) -> np.ndarray:
    """First n real BreastMNIST test images (uint8 (n, 28, 28)) from the prepared or source npz."""
    from medgen.params import load_config

    cfg = load_config(ROOT / "params.yaml")
    path = cfg.data.prepared_path if (ROOT / cfg.data.prepared_path).exists() else Path(cfg.data.source_path())
    path = ROOT / path if not path.is_absolute() else path
    if not path.is_file():
        sys.exit(
            f"{Path(sys.argv[0]).name}: no test images: {ROOT / cfg.data.prepared_path} does not exist and no "
            "source is set (run `medgen stage prepare`, or set MEDGEN_DATA_SOURCE to a BreastMNIST npz; `make` sets it)"
        )
    with np.load(path) as archive:
        images = archive["test_images"]
    return images[np.arange(n) % len(images)]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A 1-bit 8000x8000 PNG: a few kB that would decode to 64 megapixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(images: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, images)
    return buffer.getvalue()


def start_server(model_dir: Path, batcher: str = "greedy", **extra: str) -> tuple[subprocess.Popen, str]:
    """`bentoml serve` on a free loopback port; `extra` MEDGEN_* settings (default: no rate limit, since every
    client here shares one address, and 64 requests in flight: these benchmarks measure throughput and input
    handling; scripts/serve_backpressure.py measures the limits at their defaults)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "MEDGEN_MODEL_DIR": str(model_dir),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
        "MEDGEN_BATCHER": batcher,
        "MEDGEN_RATE_PER_S": "0",
        "MEDGEN_MAX_INFLIGHT": "64",
        "MEDGEN_MAX_WAIT_MS": "600000",
        **extra,
    }
    cmd = serve_command("127.0.0.1", port)
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):  # at most ~90 s
        try:
            # the http://127.0.0.1 URL of the server started above (hence the nosec)
            with urllib.request.urlopen(f"{url}/readyz", timeout=2):  # nosec B310
                return process, url
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.3)
    stop_server(process)
    raise SystemExit("bench: the service did not start (try `bentoml serve serving.service:MedGen` by hand)")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def summary(latencies: list[float], wall: float, images_per_request: int) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {
        "requests": len(ms),  # answered ones; 0 when every request of a level failed (its errors say so)
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
        "throughput_images_per_s": len(ms) * images_per_request / wall,
        "wall_s": wall,
    }


def in_process(model_dir: Path, payloads: list[bytes], batch: int, max_s: float) -> dict[str, float]:
    """The same work without HTTP: decode the same PNGs, then one onnxruntime call per `batch` images."""
    model = runtime.load_models(str(model_dir))["classifier"]
    latencies, start, i = [], time.perf_counter(), 0
    while i < len(payloads) and time.perf_counter() - start < max_s:
        t0 = time.perf_counter()
        chunk = payloads[i : i + batch]
        images = np.stack([model.contract.decode_image(p, DEFAULTS["max_image_pixels"]) for p in chunk])
        runtime.classify_probs(model, runtime.to_model_input(images))
        latencies.append(time.perf_counter() - t0)
        i += batch
    return summary(latencies, time.perf_counter() - start, batch)


async def http_level(
    url: str,
    payloads: list[bytes],
    concurrency: int,
    max_s: float,
    content_type: str = "image/png",
    per_request: int = 1,
) -> dict[str, float]:
    """`concurrency` clients posting the payloads (one request each) until they or max_s run out."""
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    latencies: list[float] = []
    errors = 0
    deadline = 0.0  # set after the warm-up, which may wait for a previous level's queue
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty() and time.perf_counter() < deadline:
            payload = queue.get_nowait()
            t0 = time.perf_counter()
            try:
                response = await client.post("/classify", content=payload, headers={"content-type": content_type})
                errors += response.status_code != 200
            except httpx.HTTPError:  # counted, not fatal: the report says how many
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        # warm-up, and a drained server: requests of the previous level that timed out on the client side
        # may still be queued there (a 2-core box needs ~1 min for 32 x 64 images), so no 30 s limit here
        headers = {"content-type": content_type}
        await client.post("/classify", content=payloads[0], headers=headers, timeout=WARM_UP_TIMEOUT_S)
        start = time.perf_counter()
        deadline = start + max_s
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {**summary(latencies, wall, per_request), "errors": errors}


def in_process_arrays(model_dir: Path, images: np.ndarray, batch: int, max_s: float) -> dict[str, float]:
    """In-process onnxruntime on uint8 batches (what a JSON batch request carries), `batch` per call."""
    model = runtime.load_models(str(model_dir))["classifier"]
    latencies, start = [], time.perf_counter()
    for i in range(0, len(images) - batch + 1, batch):
        if time.perf_counter() - start > max_s:
            break
        t0 = time.perf_counter()
        runtime.classify_probs(model, runtime.to_model_input(images[i : i + batch, None]))
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - start, batch)


def with_ratio(levels: dict[str, dict[str, float]], baseline: dict[str, float]) -> dict[str, dict[str, float]]:
    for level in levels.values():
        level["ratio_http_over_in_process"] = level["throughput_images_per_s"] / baseline["throughput_images_per_s"]
    return levels


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Three request shapes at concurrency 1, 8, 32, each against in-process onnxruntime at the same batch
    size: one PNG per request (batch 1; the server's adaptive batching merges concurrent requests), a
    JSON batch of 64 arrays and an .npy batch of 64 images per request (batch 64)."""
    images = real_images(args.requests)
    pngs = [png_bytes(im) for im in images]
    batches = [json.dumps({"images": images[i : i + 64].tolist()}).encode() for i in range(0, len(images) - 63, 64)]
    batches = (batches * (1 + 200 // len(batches)))[:200]  # 200 requests of 64 images per level (bounded)
    npys = [npy_bytes(images[i : i + 64]) for i in range(0, len(images) - 63, 64)]
    npys = (npys * (1 + 400 // len(npys)))[:400]
    base_png = in_process(args.model_dir, pngs, 1, args.max_seconds)
    base_64 = in_process_arrays(args.model_dir, np.concatenate([images] * 10), 64, args.max_seconds)
    process, url = start_server(args.model_dir, args.batcher)
    try:
        png_levels = {str(c): asyncio.run(http_level(url, pngs, c, args.max_seconds)) for c in (1, 8, 32)}
        json_levels = {
            str(c): asyncio.run(http_level(url, batches, c, args.max_seconds, "application/json", 64))
            for c in (1, 8, 32)
        }
        npy_levels = {
            str(c): asyncio.run(http_level(url, npys, c, args.max_seconds, "application/x-npy", 64)) for c in (1, 8, 32)
        }
    finally:
        stop_server(process)
    ratio = with_ratio(png_levels, base_png)["32"]["ratio_http_over_in_process"]
    return {
        "png_batch1": {
            "endpoint": "/classify, one 28x28 PNG per request",
            "in_process_onnxruntime": base_png,
            "http": png_levels,
        },
        "json_batch64": {
            "endpoint": "/classify, JSON batch of 64 arrays per request",
            "in_process_onnxruntime": base_64,
            "http": with_ratio(json_levels, base_64),
        },
        "npy_batch64": {
            "endpoint": "/classify, .npy uint8 (64, 28, 28) per request",
            "in_process_onnxruntime": base_64,
            "http": with_ratio(npy_levels, base_64),
        },
        "target": "http throughput at concurrency 32 >= 0.5 x in-process at the same batch size",
        "ratio_at_32": {
            "png_batch1": ratio,
            "json_batch64": json_levels["32"]["ratio_http_over_in_process"],
            "npy_batch64": npy_levels["32"]["ratio_http_over_in_process"],
        },
        "batcher": args.batcher,
        "machine": machine(),
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "note": "shared machine (other jobs ran at the same time); numbers are indicative",
    }


def load_mix(images: np.ndarray) -> list[tuple[str, bytes, str, int]]:
    """(path, body, content type, expected status class: 2 or 4) - good and bad requests interleaved."""
    good_png = png_bytes(images[0])
    return [
        ("/classify", good_png, "image/png", 2),
        ("/classify", json.dumps({"images": images[:8].tolist()}).encode(), "application/json", 2),
        ("/classify", b"not an image", "image/png", 4),
        ("/classify", b"", "application/json", 4),
        ("/classify", b'{"images": [[1, 2', "application/json", 4),
        ("/classify", json.dumps({"images": [[[0] * 27] * 28]}).encode(), "application/json", 4),
        ("/classify", b'{"images": [[' + b",".join([b"NaN"] * 28) + b"]]}", "application/json", 4),
        ("/classify", good_png + bytes(DEFAULTS["max_body_bytes"]), "image/png", 4),
        ("/classify", b"[" * 100_000 + b"]" * 100_000, "application/json", 4),  # deep nesting: 400 before decoding
        ("/classify", bomb_png(), "image/png", 4),  # 64 megapixels in a few kB: 413 from the header
        ("/generate", json.dumps({"label": 1, "n": 16, "seed": 3}).encode(), "application/json", 2),
        ("/generate", json.dumps({"label": 9, "n": 4}).encode(), "application/json", 4),
        ("/generate", json.dumps({"label": 0, "n": 1000}).encode(), "application/json", 4),
        ("/generate", b"[]", "application/json", 4),
    ]


async def load(url: str, mix: list[tuple[str, bytes, str, int]], concurrency: int, seconds: float) -> dict[str, Any]:
    import httpx

    counts: dict[str, int] = {}
    wrong: list[str] = []
    deadline, sent = time.perf_counter() + seconds, 0
    max_requests = 500_000  # a hard bound besides the clock

    async def worker(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal sent
        i = offset
        while time.perf_counter() < deadline and sent < max_requests:
            path, body, content_type, expected = mix[i % len(mix)]
            i, sent = i + 1, sent + 1
            try:
                response = await client.post(path, content=body, headers={"content-type": content_type})
                status = response.status_code
                ok = status // 100 == expected and (expected == 2 or "error" in response.json())
            except Exception as exc:  # a dropped connection or timeout counts as an error
                status, ok = type(exc).__name__, False
            counts[str(status)] = counts.get(str(status), 0) + 1
            if not ok and len(wrong) < 20:
                wrong.append(f"{path} {content_type} {body[:40]!r} -> {status}")

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
        wall = time.perf_counter() - start
        healthy = (await client.get("/healthz")).status_code == 200
    errors = sum(n for s, n in counts.items() if not s.isdigit() or s.startswith("5")) + len(wrong)
    return {
        "seconds": wall,
        "concurrency": concurrency,
        "requests": sum(counts.values()),
        "requests_per_s": sum(counts.values()) / wall,
        "status_counts": counts,
        "unexpected": wrong,
        "errors": errors,
        "healthy_after": healthy,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("bench", "load"))
    parser.add_argument("--model-dir", type=Path, default=None, help="default: export.out_dir from params.yaml")
    parser.add_argument("--requests", type=int, default=2000, help="bench: requests per level (bounded)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="bench: wall-clock cap per level")
    parser.add_argument("--seconds", type=float, default=60.0, help="load: duration")
    parser.add_argument("--concurrency", type=int, default=16, help="load: concurrent clients")
    parser.add_argument(
        "--batcher",
        choices=("greedy", "cork"),
        default="greedy",
        help="server-side batching: serving.batching.GreedyBatcher or BentoML's CorkDispatcher",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.model_dir is None:
        from medgen.params import load_config

        args.model_dir = ROOT / load_config(ROOT / "params.yaml").export.out_dir
    if args.mode == "bench":
        report = bench(args)
    else:
        process, url = start_server(args.model_dir, args.batcher)
        try:
            report = asyncio.run(load(url, load_mix(real_images(8)), args.concurrency, args.seconds))
        finally:
            stop_server(process)
    out = args.out or ROOT / "reports" / ("serve_bench.json" if args.mode == "bench" else "serve_load.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(json.dumps(report, indent=2, sort_keys=True))
    return 1 if args.mode == "load" and (report["errors"] or not report["healthy_after"]) else 0


if __name__ == "__main__":
    sys.exit(main())
