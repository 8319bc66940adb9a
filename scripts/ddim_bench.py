"""Wall time of /generate for a diffusion generator, a script, not a test: serving.runtime.generate in process
(numpy DDIM over onnxruntime, one intra-op thread as the service runs it) and, with --http, POST /generate on a
real `bentoml serve` on loopback.

    python scripts/ddim_bench.py [--n 16 256] [--steps 20] [--guidance 1] [--repeat 5] [--http]
                                 [--onnx FILE | --checkpoint models/generate/generator.pt]

Without --onnx it saves a denoiser of the study's default size (ClassConditionalUNet() defaults: width 16,
channel_mult (1, 2, 2), 32 px sample, 28 px images; random weights, the time does not depend on them) as the
generate stage would, and exports it with the export stage's own code (network and per-step sampler parity
reported). --http also exports tests.standins' classifier (the service serves both; needs BreastMNIST:
$MEDGEN_DATA_SOURCE) and the manifest. Prints p50/min/max seconds per n and the 1-minute load average before
and after (the machine is shared: read the figures with it); writes reports/ddim_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from serving import runtime  # noqa: E402


def export_default(
    folder: Path, steps: int, guidance: float, http: bool, checkpoint: Path | None = None
) -> tuple[Path, dict]:
    """<folder>/export with the default-size denoiser (or the trained `checkpoint`, a generate-stage
    generator.pt) as generator.onnx (and, for --http, a stand-in classifier and the manifest); returns the
    folder and the generator's parity figures."""
    import torch

    from medgen import data, manifest
    from medgen.models.diffusion import ClassConditionalUNet
    from medgen.params import load_config
    from medgen.stages import export
    from medgen.training import save_model
    from tests.standins import CLASS_NAMES, save_classifier

    torch.set_num_threads(1)
    cfg = load_config(
        ROOT / "params.yaml",
        overrides=[
            f"export.classifier_checkpoint={folder / 'classifier.pt'}",
            f"export.generator_checkpoint={folder / 'generator.pt'}",
            f"export.augmented_checkpoint={folder / 'absent.pt'}",
            f"export.out_dir={folder / 'export'}",
        ],
    )
    if checkpoint is not None:
        import shutil

        shutil.copyfile(checkpoint, cfg.export.generator_checkpoint)
    torch.manual_seed(0)
    model = ClassConditionalUNet().eval()
    with torch.no_grad():  # a fresh UNet's output layer is zero: weights that make every layer compute
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    config = {"variant": "ddpm", "family": "diffusion", "sampler_steps": steps, "guidance": guidance}
    config |= {"n_classes": 2, "class_names": CLASS_NAMES, "image_shape": [1, 28, 28], "profile": "bench"}
    if checkpoint is None:
        save_model(cfg.export.generator_checkpoint, model, {}, config=config, metrics={})
    if http:
        real, _ = data.to_tensors(data.load_npz(cfg.data.source_path(), cfg.data).test)
        save_classifier(cfg.export.classifier_checkpoint, images=real[:64])
    else:
        real = torch.zeros(1, 1, 28, 28)  # a generator's parity inputs are its own: only the shape is read
    parity = {}
    generator = export.Target(
        "generator", "generator", "medgen-generator", Path(cfg.export.generator_checkpoint), "generator"
    )
    for target in export.targets(cfg) if http else [generator]:
        parity[target.key] = export.export_one(target, cfg, real.numpy())[0]
    if http:
        manifest.write(cfg, cfg.export.out_dir)
    return Path(cfg.export.out_dir), parity["generator"]


def time_http(folder: Path, sizes: list[int], repeat: int) -> dict:
    """p50/min/max of POST /generate (PNG grid and JSON arrays) per n, one client, on a real bentoml serve."""
    import httpx

    sys.path.insert(0, str(ROOT / "scripts"))
    import serve_bench

    process, url = serve_bench.start_server(folder)
    try:
        results = {}
        with httpx.Client(timeout=120) as client:
            for fmt in ("png", "array"):
                for n in sizes:
                    body = {"label": 0, "n": n, "seed": 0, "format": fmt}
                    assert client.post(f"{url}/generate", json=body).status_code == 200  # warm-up
                    times = []
                    for r in range(repeat):
                        t0 = time.perf_counter()
                        response = client.post(f"{url}/generate", json=body | {"label": r % 2, "seed": r})
                        times.append(time.perf_counter() - t0)
                        assert response.status_code == 200, response.text
                    results[f"{fmt}/{n}"] = stats(times)
                    print(f"HTTP {fmt:5s} n={n:4d}: p50 {results[f'{fmt}/{n}']['p50_s']:.3f} s", flush=True)
        return results
    finally:
        serve_bench.stop_server(process)


def stats(times: list[float]) -> dict[str, float]:
    return {"p50_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--onnx", type=Path, help="an exported denoiser (generator.onnx, metadata embedded)")
    parser.add_argument("--checkpoint", type=Path, help="a trained denoiser checkpoint (generate's generator.pt)")
    parser.add_argument("--http", action="store_true", help="also time POST /generate on a real bentoml serve")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "ddim_bench.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddim-bench-") as scratch:
        parity = None
        if args.onnx:
            path = args.onnx
        else:
            folder, parity = export_default(Path(scratch), args.steps, args.guidance, args.http, args.checkpoint)
            path = folder / "generator.onnx"
            print(f"export parity: {json.dumps(parity)}")
        model = runtime.build_model("generator", path.read_bytes(), None, str(path))
        load_before = os.getloadavg()[0]
        results = {}
        for n in args.n:
            runtime.generate(model, 0, n, seed=0, steps=args.steps, guidance=args.guidance)  # warm-up
            times = []
            for r in range(args.repeat):
                t0 = time.perf_counter()
                runtime.generate(model, r % 2, n, seed=r, steps=args.steps, guidance=args.guidance)
                times.append(time.perf_counter() - t0)
            results[str(n)] = stats(times)
            p50 = results[str(n)]["p50_s"]
            print(
                f"in process n={n:4d} steps={args.steps} guidance={args.guidance:g}: p50 {p50:.3f} s "
                f"(min {min(times):.3f}, max {max(times):.3f}, {args.repeat} runs)",
                flush=True,
            )
        http = time_http(folder, args.n, args.repeat) if args.http and not args.onnx else None
    report = {
        "model": str(args.onnx or args.checkpoint or "ClassConditionalUNet() defaults, random weights"),
        "steps": args.steps,
        "guidance": args.guidance,
        "ort_threads": int(os.environ.get("MEDGEN_ORT_THREADS", 1)),
        "cpus": os.cpu_count(),
        "load_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "export_parity": parity,
        "in_process": results,
        "http": http,
    }
    print(f"1-min load average {load_before:.2f} before, {report['load_1min']['after']:.2f} after")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
