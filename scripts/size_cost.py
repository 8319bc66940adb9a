"""What one training epoch of each medgen model costs at a profile's image size, and what the profile's
epochs add up to (a benchmark script, not a test).

    python scripts/size_cost.py                       # profiles full size64 size128 size224 -> reports/size_cost.json
    python scripts/size_cost.py --profiles full size64 --channels 3

Random images in [-1, 1] with BreastMNIST's training-set size (546) stand in for the data: an epoch's cost
depends on shapes, not pixels. Each model is built as its stage builds it with the profile's settings
(classify: ResNet-18 with the profile's classify.stem resolved for data.size; generate: the GAN at
g/d_channels; represent: each autoencoder at latent_dim 64; the metric feature net) and trained for one
epoch on one CPU thread, after one warm-up batch. The estimate is epochs x seconds per epoch, summed with
the profile's epoch and trial counts (searches counted at full length: an upper bound, pruning and early
stopping shorten them). On a shared machine compare profiles measured in the same call only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

import torch

from medgen import (
    classification,
    latent,
)
from medgen.gan_training import GanHyper, GanTrainer, fit_feature_net
from medgen.models import autoencoders
from medgen.params import load_config
from medgen.training import run_epoch


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def classify_epoch(cfg, x: torch.Tensor, y: torch.Tensor, stem: str) -> float:
    model, _ = classification.build_model(replace(cfg.classify, stem=stem), 2, tuple(x.shape[1:]))
    optimizer, _ = classification._optimizer(model, cfg.classify, 1e-3, 1e-4, 1)
    augment = classification.augmentation(cfg.classify, 1.0)
    loss = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)

    def epoch(images: torch.Tensor, labels: torch.Tensor) -> None:
        steps = classification.ClassifierSteps(model, images, labels, optimizer, None, loss, augment, generator)
        run_epoch(steps, len(labels), cfg.classify.batch_size, generator=generator)

    epoch(x[:64], y[:64])  # warm-up
    return timed(lambda: epoch(x, y))


def gan_epoch(cfg, x: torch.Tensor, y: torch.Tensor) -> float:
    trainer = GanTrainer(cfg.generate, GanHyper.defaults(cfg.generate), 2, torch.device("cpu"), tuple(x.shape[1:]))
    trainer.train_epoch(x[:64], y[:64])
    return timed(lambda: trainer.train_epoch(x, y))


def ae_epoch(cfg, method: str, x: torch.Tensor) -> float:
    rc = cfg.represent
    model = autoencoders.build(
        method, 64, image_size=x.shape[-1], channels=x.shape[1], dropout=rc.dropout, width=rc.width, beta=rc.beta
    )
    latent.fit_autoencoder(model, x[:64], 1, 1e-3, rc.batch_size, 0)
    return timed(lambda: latent.fit_autoencoder(model, x, 1, 1e-3, rc.batch_size, 0))


def feature_epoch(cfg, x: torch.Tensor, y: torch.Tensor) -> float:
    one = replace(cfg.generate, feature_epochs=1)
    return timed(lambda: fit_feature_net(x, y, 2, one, torch.device("cpu")))


def measure(cfg, channels: int, n: int) -> dict[str, float]:
    size = cfg.data.size
    torch.manual_seed(0)
    x, y = torch.rand(n, channels, size, size) * 2 - 1, torch.arange(n) % 2
    row = {
        "size": size,
        "classify_stem": classification.resolve_stem(cfg.classify.stem, size),
        "classify": classify_epoch(cfg, x, y, cfg.classify.stem),
        "gan": gan_epoch(cfg, x, y),
        "feature_net": feature_epoch(cfg, x, y),
    }
    for method in autoencoders.METHODS:
        row[method] = ae_epoch(cfg, method, x)
    return row


def full_run_estimate(cfg, row: dict[str, float]) -> dict[str, float]:
    """Seconds of training in a run of this profile at these per-epoch costs (searches at full length)."""
    c, g, r, a = cfg.classify, cfg.generate, cfg.represent, cfg.augment
    arms = len(a.arms) * a.seeds * (a.epochs or c.epochs)
    stages = {
        "represent": sum(row[m] * (r.trials_neural + 1) * r.epochs for m in r.neural_methods)
        + row[r.explore_method] * r.explore_epochs,
        "classify": row["classify"] * (c.n_trials * c.search_epochs + c.seeds * c.epochs),
        "generate": row["gan"] * (g.n_trials * g.search_epochs + g.epochs) + row["feature_net"] * g.feature_epochs,
        "augment": row["classify"] * arms,
    }
    return {**{k: round(v) for k, v in stages.items()}, "total_min": round(sum(stages.values()) / 60, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["full", "size64", "size128", "size224"])
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--images", type=int, default=546, help="training images per epoch (BreastMNIST: 546)")
    parser.add_argument("--out", default="reports/size_cost.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    for profile in args.profiles:
        cfg = load_config(ROOT / "params.yaml", profile=profile)
        measured = measure(cfg, args.channels, args.images)
        row = {k: round(v, 3) if isinstance(v, float) else v for k, v in measured.items()}
        row["estimate_s"] = full_run_estimate(cfg, row)
        rows[profile] = row
        print(json.dumps({profile: row}), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"images": args.images, "channels": args.channels, "threads": 1, "seconds_per_epoch": rows}, indent=2
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
