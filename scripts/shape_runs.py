"""Smoke-profile runs of every stage on data of each shape: stage wall time and peak memory (a benchmark
script, not a test).

    python scripts/shape_runs.py                         # all cases -> reports/shape_runs.json + a table
    python scripts/shape_runs.py --cases grey28 grey64 --profile smoke

Cases (built under --root from the real BreastMNIST, $MEDGEN_DATA_SOURCE or ../shared/data):
  grey28, grey64, grey128, grey224: BreastMNIST at 28 px and upscaled (PIL bicubic) to 64/128/224, written
      under MedMNIST's own names (breastmnist_64.npz ...) beside breastmnist.npz and found through data.size
      (the MedMNIST+ lookup). Upscaled 28 px images, not MedMNIST+'s own: same shapes, so same costs.
  rgb28: BreastMNIST with three tinted channels (flag `breastrgb`, n_classes 2).
  cifar32: the scikit-image CIFAR-10 stand-in in native format, 60 training / 16 test patches per class
      (540 / 60 / 160 after the carve), flag cifar10.
Each stage runs as its own `medgen stage <name>` under /usr/bin/time -v (wall seconds, max RSS), in a
scratch folder per case, `classify.stem=auto` (the size rule) for every case.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

STAGES = ("prepare", "represent", "classify", "generate", "augment", "export")
CASES = ("grey28", "grey64", "grey128", "grey224", "rgb28", "cifar32")


def breastmnist() -> Path:
    shared = ROOT.parent / "shared" / "data" / "breastmnist.npz"
    for candidate in (os.environ.get("MEDGEN_DATA_SOURCE", ""), str(shared)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise SystemExit("shape_runs: real BreastMNIST not found ($MEDGEN_DATA_SOURCE or ../shared/data/breastmnist.npz)")


def resized(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images])


def build(case: str, folder: Path) -> list[str]:
    """Write the case's data into `folder`; return the data.* overrides that read it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = breastmnist()
    with np.load(source) as archive:
        arrays = {k: archive[k] for k in archive.files}
    if case.startswith("grey"):
        size = int(case[4:])
        shutil.copy(source, folder / "breastmnist.npz")
        if size != 28:
            np.savez(
                folder / f"breastmnist_{size}.npz",
                **{k: resized(v, size) if k.endswith("images") else v for k, v in arrays.items()},
            )
        return [f"data.source={folder / 'breastmnist.npz'}", f"data.size={size}"]
    if case == "rgb28":
        tint = np.array([1.0, 0.8, 0.6])
        rgb = {
            k: (v[..., None] * tint).round().astype(np.uint8) if k.endswith("images") else v for k, v in arrays.items()
        }
        np.savez(folder / "breastrgb.npz", **rgb)
        return ["data.flag=breastrgb", "data.n_classes=2", f"data.source={folder / 'breastrgb.npz'}"]
    from medgen.standin import skimage_patches, write_cifar10

    write_cifar10(folder, skimage_patches(60, seed=0), skimage_patches(16, seed=1))
    return ["data.flag=cifar10", "data.size=32", "data.check_counts=false", f"data.source={folder}"]


def timed_stage(stage: str, cwd: Path, overrides: list[str], profile: str) -> dict:
    args = [a for o in overrides for a in ("-S", o)]
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "medgen.cli", "stage", stage, "--profile", profile, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MEDGEN_"))}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.group(1).split(":")))) if wall else None
    row = {
        "seconds": round(seconds, 1) if seconds else None,
        "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None,
        "exit": done.returncode,
    }
    if done.returncode:
        row["error"] = [line for line in done.stderr.splitlines() if "error" in line.lower()][-1:]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "medgen-shape-runs")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "shape_runs.json")
    args = parser.parse_args(argv)
    results = {}
    for case in args.cases:
        work = args.root / case
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        overrides = build(case, work / "source") + ["classify.stem=auto"]
        results[case] = {stage: timed_stage(stage, work, overrides, args.profile) for stage in STAGES}
        print(case, json.dumps(results[case]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"profile": args.profile, "runs": results}, indent=2) + "\n")
    print(f"\n| case | {' | '.join(STAGES)} | peak RSS (MB) |\n|---|{'---|' * (len(STAGES) + 1)}")
    for case, rows in results.items():
        cells = [f"{rows[s]['seconds']} s" if not rows[s]["exit"] else "failed" for s in STAGES]
        print(f"| {case} | {' | '.join(cells)} | {max(r['peak_rss_mb'] or 0 for r in rows.values())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
