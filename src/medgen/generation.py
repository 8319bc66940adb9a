"""The generate stage's library: the real data as generation judges it (tensors and metric features), the
metric feature net's fit, validation FD, the quality report of a generator, and per-class sample grids."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen import data, metrics, plots, synthetic
from medgen.config import Config, GenerateConfig
from medgen.errors import ConfigError, MedgenError
from medgen.gan_training import GanHyper, GanTrainer, extract_features, fit_feature_net
from medgen.io import output_files, remove_output, write_json
from medgen.models.features import FeatureNet
from medgen.training import Loop, fit, save_checkpoint, set_seed

GRID_PER_CLASS = 16  # images per class in each checkpoint grid


@dataclass
class Real:
    """The real data as the stage uses it: tensors in [-1, 1] and metric features of each set."""

    dataset: data.Dataset
    x: torch.Tensor  # train images (N, C, S, S)
    y: torch.Tensor  # train labels (N,)
    net: FeatureNet
    train_features: np.ndarray  # (N, feature_dim)
    heldout: data.Split  # val + test, for the final report only
    heldout_features: np.ndarray


def prepare_real(cfg: Config, dataset: data.Dataset, device: torch.device) -> Real:
    """Fit and checkpoint the metric feature net on the train split; return it with every real set's features."""
    x, y = data.to_tensors(dataset.train, str(device))
    net = fit_feature_net(x, y, dataset.n_classes, cfg.generate, device)
    shape = {"n_classes": dataset.n_classes, "image_shape": list(dataset.image_shape)}
    save_checkpoint(cfg.generate.feature_checkpoint, net, config=asdict(cfg.generate) | shape, metrics={})
    heldout = data.Split(
        np.concatenate([dataset.val.images, dataset.test.images]),
        np.concatenate([dataset.val.labels, dataset.test.labels]),
    )
    return Real(
        dataset, x, y, net, extract_features(net, x), heldout, extract_features(net, data.to_tensors(heldout)[0])
    )


def val_fd(generator: torch.nn.Module, real: Real, n: int, seed: int) -> float:
    """FD between train-real features and n synthetic samples with val's class proportions."""
    val = real.dataset.val.labels
    labels = val if n == len(val) else np.random.default_rng(seed).choice(val, n)
    fake = synthetic.sample_like(generator, np.sort(labels), seed)
    return metrics.frechet_distance(real.train_features, extract_features(real.net, data.to_tensors(fake)[0]))


def checkpoint_grid(generator: torch.nn.Module, n_classes: int, seed: int):
    """One row block per class, the same z every checkpoint so the grids show training progress."""
    split = synthetic.sample(generator, list(range(n_classes)), GRID_PER_CLASS, seed)
    return plots.montage(split.images, columns=GRID_PER_CLASS)


def evaluate(cfg: Config, generator: torch.nn.Module, real: Real) -> dict[str, Any]:
    """FD/KID/C2ST of fresh synthetic sets (held-out's class counts; train's class counts for C2ST)."""
    seed = cfg.seed + 1000  # not the seeds of the search's or the written samples' z
    like_heldout = synthetic.sample_like(generator, real.heldout.labels, seed)
    like_train = synthetic.sample_like(generator, real.dataset.train.labels, seed + 1000)
    feats = lambda split: extract_features(real.net, data.to_tensors(split)[0])  # noqa: E731
    return metrics.generation_quality(
        (real.train_features, real.dataset.train.labels),
        (real.heldout_features, real.heldout.labels),
        (feats(like_heldout), like_heldout.labels),
        feats(like_train),
        seed=cfg.seed,
    )


def requested_labels(cfg: GenerateConfig, n_classes: int) -> list[int]:
    """generate.labels, checked against the data's classes before any training; empty -> all classes."""
    labels = list(cfg.labels) or list(range(n_classes))
    bad = [c for c in labels if not 0 <= c < n_classes]
    if bad:
        raise ConfigError(f"generate.labels: {bad} out of range, the data has classes 0..{n_classes - 1}")
    return labels


def gan_loop(gcfg: GenerateConfig, epochs: int, label: str, device: torch.device, trial: Any = None) -> Loop:
    """The loop settings every GAN fit shares (search trial or final fit): epochs numbered from 1, the EMA
    generator's val FD every eval_every epochs (lower is better), losses on the progress line; `trial`
    (an optuna.Trial) reports to a study and prunes."""
    return Loop(
        epochs,
        gcfg.batch_size,
        label,
        device=device,
        first_epoch=1,
        eval_every=gcfg.eval_every,
        monitor="val_fd",
        mode="min",
        worst=math.inf,
        trial=trial,
        show=("loss_d", "loss_g"),
    )


def fit_final(
    cfg: Config, hyper: GanHyper, real: Real, device: torch.device
) -> tuple[torch.nn.Module, list[dict], int]:
    """Train the chosen GAN for generate.epochs; keep the EMA generator with the best val FD.

    Returns the kept generator, the per-epoch history and the epoch it comes from.
    """
    gcfg, n_eval = cfg.generate, cfg.generate.eval_samples or len(real.dataset.val)
    set_seed(cfg.seed)
    trainer = GanTrainer(gcfg, hyper, real.dataset.n_classes, device, real.dataset.image_shape)
    for stale in output_files(gcfg.plots_dir, "grid_epoch_*.png"):  # grids of an earlier, longer run
        remove_output(stale)

    def grid(epoch: int, row: dict[str, Any]) -> None:
        if epoch % gcfg.checkpoint_every == 0 or epoch == gcfg.epochs:
            image = checkpoint_grid(trainer.sampler(), real.dataset.n_classes, cfg.seed)
            plots.save_png(image, Path(gcfg.plots_dir) / f"grid_epoch_{epoch:04d}.png")

    loop = gan_loop(gcfg, gcfg.epochs, f"gan final fit ({hyper.variant})", device)
    validate = lambda epoch: {"val_fd": val_fd(trainer.sampler(), real, n_eval, cfg.seed)}  # noqa: E731
    generator = trainer.sampler()  # the EMA copy: its best-FD weights are kept
    fitted = fit(trainer.steps(real.x, real.y), len(real.x), loop, validate, keep=generator, on_epoch=grid)
    if not any(math.isfinite(row.get("val_fd", math.nan)) for row in fitted.rows):
        raise MedgenError("generate: the GAN diverged (no finite val FD); lower generate.lr_g/lr_d or change variant")
    return generator.eval(), fitted.rows, fitted.best_epoch


def write_outputs(cfg: Config, generator: torch.nn.Module, history: list[dict]) -> list[Path]:
    """Samples npz, per-class final grids, loss curves and history.json; returns the figure paths."""
    gcfg = cfg.generate
    labels = requested_labels(gcfg, generator.n_classes)
    samples = synthetic.sample(generator, labels, gcfg.samples_per_class, cfg.seed)
    synthetic.save_samples(samples, synthetic.samples_path(cfg))
    plots_dir = Path(gcfg.plots_dir)
    figures = [plots.save_figure(plots.gan_history(history), plots_dir / "losses.png")]
    write_json(plots_dir / "history.json", [{k: v for k, v in row.items() if v == v} for row in history])
    for label in labels:
        images = samples.images[samples.labels == label][:64]
        figures.append(plots.save_png(plots.montage(images, columns=8), plots_dir / f"samples_class_{label}.png"))
    return figures
