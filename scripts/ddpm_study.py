"""CPU feasibility study of the class-conditional diffusion model on the real BreastMNIST (issue #12).

Not a test: it trains for minutes. One process = one configuration, on ONE torch thread; training stops
at each CPU-time budget (time.process_time of the training steps only, not wall time: the machine is
shared) and the EMA model is judged there with the generate stage's metrics (medgen.metrics
.generation_report over the stage's feature net, medgen.gan_training.fit_feature_net, same seed):

    nice .venv/bin/python scripts/ddpm_study.py run --name w32 --budgets 5,10,20 --width 32
    nice .venv/bin/python scripts/ddpm_study.py gan --name acgan      # the GAN baseline, same metrics
    .venv/bin/python scripts/ddpm_study.py table                      # every result so far, one table

Writes reports/ddpm_study/<name>/results.json (one row per budget x guidance), sample montages per class
and the 16 closest sample/training pairs as PNGs. The data: $MEDGEN_DATA_SOURCE or
../shared/data/breastmnist.npz.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medgen import data, metrics, plots, synthetic
from medgen.config import DataConfig, GenerateConfig
from medgen.diffusion import DiffusionTrainer
from medgen.gan_training import extract_features, fit_feature_net
from medgen.models.diffusion import ClassConditionalUNet
from medgen.progress import Progress
from medgen.training import save_model, set_seed

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "reports" / "ddpm_study"
SEED = 0


class Judge:
    """The real data and the generate stage's metric feature net (trained as the stage does, seed 0)."""

    def __init__(self) -> None:
        source = os.environ.get("MEDGEN_DATA_SOURCE") or str(ROOT.parent / "shared" / "data" / "breastmnist.npz")
        self.dataset = data.load_npz(source, DataConfig())
        set_seed(SEED)
        self.x, self.y = data.to_tensors(self.dataset.train)
        started = time.process_time()
        self.net = fit_feature_net(self.x, self.y, self.dataset.n_classes, GenerateConfig(), torch.device("cpu"))
        self.feature_seconds = time.process_time() - started
        d = self.dataset
        self.heldout = data.Split(
            np.concatenate([d.val.images, d.test.images]), np.concatenate([d.val.labels, d.test.labels])
        )
        self.train_features = self.features(d.train)
        self.heldout_features = self.features(self.heldout)

    def features(self, split: data.Split) -> np.ndarray:
        return extract_features(self.net, data.to_tensors(split)[0])

    def judge(self, sampler, seed: int) -> tuple[dict, data.Split]:
        """generation_report of fresh samples (held-out's and train's class counts), plus sampling CPU time."""
        started = time.process_time()
        like_heldout = synthetic.sample_like(sampler, self.heldout.labels, seed)
        like_train = synthetic.sample_like(sampler, self.dataset.train.labels, seed + 1000)
        seconds = time.process_time() - started
        report = metrics.generation_report(
            (self.train_features, self.dataset.train.labels),
            (self.heldout_features, self.heldout.labels),
            (self.features(like_heldout), like_heldout.labels),
            (self.features(like_train), like_train.labels),
            (self.dataset.train.images, self.heldout.images, like_train.images),
            seed=SEED,
        )
        report["sample_cpu_s_per_image"] = seconds / (len(like_heldout) + len(like_train))
        return report, like_train


def figures(judge: Judge, samples: data.Split, folder: Path, tag: str) -> None:
    """Per-class montages (64 samples) and the 16 closest sample/training pairs (pixel space)."""
    for label in np.unique(samples.labels):
        images = samples.images[samples.labels == label][:64]
        plots.save_png(plots.montage(images, columns=8), folder / f"samples_{tag}_class_{label}.png")
    train = judge.dataset.train.images
    pairs = metrics.closest_pairs(metrics.flat_pixels(train), metrics.flat_pixels(samples.images), 16)
    plots.save_png(plots.nearest_pairs_montage(samples.images, train, pairs), folder / f"closest_pairs_{tag}.png")


def summary_row(report: dict) -> dict:
    keys = ("fd_ratio", "kid_ratio", "c2st_acc", "precision", "recall", "density", "coverage", "memorization_share")
    row = {k: report[k] for k in keys}
    for label, values in report["per_class"].items():
        row |= {f"c{label}_{k}": values[k] for k in keys}
    return row | {"sample_cpu_s_per_image": report["sample_cpu_s_per_image"]}


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    folder = OUT / args.name
    folder.mkdir(parents=True, exist_ok=True)
    judge = Judge()
    kwargs = {
        "n_classes": judge.dataset.n_classes,
        "width": args.width,
        "channel_mult": args.channel_mult,
        "attention_levels": args.attention,
        "mid_attention": args.mid_attention,
        "sample_size": args.sample_size,
        "prediction": args.prediction,
        "beta_schedule": args.schedule,
        "layers_per_block": args.layers,
        "norm_groups": args.norm_groups,
    }
    set_seed(SEED)
    model = ClassConditionalUNet(**kwargs)
    trainer = DiffusionTrainer(
        model, lr=args.lr, ema_decay=args.ema, label_dropout=args.label_dropout, hflip=args.hflip
    )
    results, train_cpu, epoch = [], 0.0, 0
    for budget in sorted(args.budgets):
        wall = time.perf_counter()
        with Progress(int(budget * 60), f"{args.name} training", start=int(train_cpu), unit="cpu-s") as progress:
            while train_cpu < budget * 60:
                started = time.process_time()
                loss = trainer.train_epoch(judge.x, judge.y, args.batch)["loss"]
                train_cpu += time.process_time() - started
                epoch += 1
                progress.update(min(int(train_cpu), int(budget * 60)), epoch=epoch, loss=loss)
        print(f"[{args.name}] {budget} CPU-min: epoch {epoch}, step {trainer.done_steps}, loss {loss:.4f}", flush=True)
        last = budget == max(args.budgets)
        for guidance in args.guidance + (args.guidance_last if last else []):
            report, samples = judge.judge(trainer.sampler(args.steps, guidance), SEED + 1000)
            row = {
                "name": args.name,
                "budget_cpu_min": budget,
                "train_cpu_s": round(train_cpu, 1),
                "epochs": epoch,
                "steps": trainer.done_steps,
                "loss": loss,
                "guidance": guidance,
                "sampler_steps": args.steps,
                **summary_row(report),
                "config": kwargs | _hyper(args),
            }
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "config"}, default=float), flush=True)
            figures(judge, samples, folder, f"{budget}m_g{guidance:g}")
            (folder / "results.json").write_text(json.dumps(results, indent=1, default=float))
        save_model(folder / f"model_{budget}m.pt", trainer.ema, kwargs, config=_hyper(args), metrics={})
        print(f"[{args.name}] eval wall {time.perf_counter() - wall:.0f} s (incl. training)", flush=True)


def judge_checkpoint(args: argparse.Namespace) -> None:
    """Judge a saved study model at other sampler settings (DDIM steps x guidance): no training."""
    from medgen.diffusion import DiffusionSampler
    from medgen.training import load_model

    torch.set_num_threads(1)
    model, checkpoint = load_model(args.checkpoint)
    folder = Path(args.checkpoint).parent
    judge = Judge()
    rows = []
    for steps in args.steps:
        for guidance in args.guidance:
            report, samples = judge.judge(DiffusionSampler(model, steps, guidance), SEED + 1000)
            row = {
                "name": f"{folder.name}:{Path(args.checkpoint).stem}",
                "guidance": guidance,
                "sampler_steps": steps,
                **summary_row(report),
            }
            rows.append(row)
            print(json.dumps(row, default=float), flush=True)
            figures(judge, samples, folder, f"{Path(args.checkpoint).stem}_s{steps}_g{guidance:g}")
    out = folder / f"judge_{Path(args.checkpoint).stem}.json"
    out.write_text(json.dumps(rows, indent=1, default=float))


def _hyper(args: argparse.Namespace) -> dict:
    return {
        "lr": args.lr,
        "batch": args.batch,
        "ema": args.ema,
        "label_dropout": args.label_dropout,
        "hflip": args.hflip,
    }


def gan(args: argparse.Namespace) -> None:
    """The committed GAN settings (metrics/generate.json `hyper`), trained for generate.epochs, same metrics."""
    from medgen.gan_training import GanHyper, GanTrainer

    torch.set_num_threads(1)
    folder = OUT / args.name
    folder.mkdir(parents=True, exist_ok=True)
    judge = Judge()
    committed = json.loads((ROOT / "metrics" / "generate.json").read_text())
    cfg = GenerateConfig()
    hyper = GanHyper(**committed["hyper"])
    set_seed(SEED)
    trainer = GanTrainer(cfg, hyper, judge.dataset.n_classes, torch.device("cpu"))
    started = time.process_time()
    for _ in range(args.epochs):
        trainer.train_epoch(judge.x, judge.y)
    train_cpu = time.process_time() - started
    report, samples = judge.judge(trainer.sampler(), SEED + 1000)
    row = {
        "name": args.name,
        "train_cpu_s": round(train_cpu, 1),
        "epochs": args.epochs,
        **summary_row(report),
        "config": asdict(hyper),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "config"}, default=float), flush=True)
    figures(judge, samples, folder, f"{args.epochs}ep")
    (folder / "results.json").write_text(json.dumps([row], indent=1, default=float))


def onnx(args: argparse.Namespace) -> None:
    """Export a study checkpoint, check network and per-step sampler parity, time n images via numpy + onnxruntime."""
    import statistics
    import sys

    import onnxruntime as ort

    from medgen.diffusion_onnx import export_denoiser, network_parity, sampler_parity
    from medgen.training import load_model

    sys.path.insert(0, str(ROOT))
    from serving import ddim

    torch.set_num_threads(1)
    model, _ = load_model(args.checkpoint)
    path = export_denoiser(
        model,
        Path(args.checkpoint).with_suffix(".onnx"),
        metadata={"default_steps": args.steps, "default_guidance": args.guidance},
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the service (MEDGEN_ORT_THREADS default)
    sess = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    meta = json.loads(sess.get_modelmeta().custom_metadata_map["medgen"])
    noise = np.random.default_rng(0).standard_normal((args.n, 1, model.image_size, model.image_size)).astype(np.float32)
    labels = (np.arange(args.n) % model.n_classes).astype(np.int64)
    step = ddim.make_step(ddim.onnx_denoiser(sess), labels, meta, args.steps, args.guidance)
    result = {
        "network": network_parity(sess, model),
        "sampler": sampler_parity(step, model, labels, noise, args.steps, args.guidance),
    }
    times = []
    for seed in range(args.repeats):
        started = time.perf_counter()
        ddim.generate(sess, meta, label=seed % model.n_classes, n=args.n, seed=seed)
        times.append(time.perf_counter() - started)
    cpu = time.process_time()
    ddim.generate(sess, meta, label=0, n=args.n, seed=99)
    result["generate"] = {
        "n": args.n,
        "steps": args.steps,
        "guidance": args.guidance,
        "p50_s": statistics.median(times),
        "max_s": max(times),
        "repeats": args.repeats,
        "cpu_s_one_call": time.process_time() - cpu,
    }
    print(json.dumps(result, indent=1))


def table(_: argparse.Namespace) -> None:
    """Every results.json under reports/ddpm_study as one markdown table."""
    cols = (
        "name",
        "budget_cpu_min",
        "epochs",
        "sampler_steps",
        "guidance",
        "fd_ratio",
        "c0_fd_ratio",
        "c1_fd_ratio",
        "kid_ratio",
        "c2st_acc",
        "c0_c2st_acc",
        "precision",
        "recall",
        "memorization_share",
        "sample_cpu_s_per_image",
    )
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for path in sorted([*OUT.glob("*/results.json"), *OUT.glob("*/judge_*.json")]):
        for row in json.loads(path.read_text()):
            cells = [row.get(c, "") for c in cols]
            print("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    floats = lambda text: [float(v) for v in text.split(",") if v]  # noqa: E731
    p = sub.add_parser("run", help="train one diffusion configuration and judge it at each CPU budget")
    p.add_argument("--name", required=True)
    p.add_argument("--budgets", type=floats, default=[5, 10, 20], help="CPU minutes of training, comma-separated")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--channel-mult", type=ints, default=[1, 2, 2])
    p.add_argument("--attention", type=ints, default=[2], help="levels with attention blocks ('' = none)")
    p.add_argument("--mid-attention", type=int, default=1)
    p.add_argument("--sample-size", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--norm-groups", type=int, default=8)
    p.add_argument("--prediction", default="v_prediction")
    p.add_argument("--schedule", default="squaredcos_cap_v2")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--hflip", action="store_true")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps at evaluation")
    p.add_argument("--guidance", type=floats, default=[1.0], help="guidance scales judged at every budget")
    p.add_argument("--guidance-last", type=floats, default=[], help="further scales judged at the last budget only")
    p.set_defaults(func=run)
    g = sub.add_parser("gan", help="the committed GAN settings, judged with the same metrics")
    g.add_argument("--name", default="acgan")
    g.add_argument("--epochs", type=int, default=GenerateConfig().epochs)
    g.set_defaults(func=gan)
    j = sub.add_parser("judge", help="judge a saved study model at other DDIM steps / guidance scales")
    j.add_argument("--checkpoint", required=True)
    j.add_argument("--steps", type=ints, default=[20])
    j.add_argument("--guidance", type=floats, default=[1.0])
    j.set_defaults(func=judge_checkpoint)
    o = sub.add_parser("onnx", help="export a study checkpoint; parity and p50 time of the numpy DDIM loop")
    o.add_argument("--checkpoint", required=True)
    o.add_argument("--steps", type=int, default=20)
    o.add_argument("--guidance", type=float, default=1.0)
    o.add_argument("--n", type=int, default=16)
    o.add_argument("--repeats", type=int, default=10)
    o.set_defaults(func=onnx)
    sub.add_parser("table", help="print every result as a markdown table").set_defaults(func=table)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
