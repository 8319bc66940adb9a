"""The generate stage's library: the real data as generation judges it (tensors and metric features), the
metric feature net's fit, validation FD, the quality report of a generator, and per-class sample grids."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, replace
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

log = logging.getLogger(__name__)

GRID_PER_CLASS = 16  # images per class in each checkpoint grid
# fewer images than this in a class of the train or held-out set: no per-class extended report
# (metrics.precision_recall's k = 3 neighbours, c2st_accuracy's 5 folds)
MIN_PER_CLASS = 5


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


def portable(real: Real) -> Real:
    """`real` on the CPU, the feature net a copy: what is sent to a worker process (`on_device` there)."""
    return replace(real, x=real.x.cpu(), y=real.y.cpu(), net=copy.deepcopy(real.net).cpu())


def on_device(real: Real, device: torch.device | str) -> Real:
    """`real` with its tensors and feature net on `device`."""
    return replace(real, x=real.x.to(device), y=real.y.to(device), net=real.net.to(device))


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


def judged_sets(cfg: Config, generator, real: Real, executor=None) -> tuple[data.Split, data.Split]:
    """The judge's fresh synthetic sets: held-out's class counts (FD/KID) and train's (C2ST, memorisation),
    drawn with seeds that are not the search's or the written samples'; `executor` (a medgen.workers pool)
    shares the drawing with a worker and changes no pixel (`sample_like_sets`)."""
    seed = cfg.seed + 1000
    wanted = [(real.heldout.labels, seed), (real.dataset.train.labels, seed + 1000)]
    like_heldout, like_train = sample_like_sets(generator, wanted, executor)
    return like_heldout, like_train


def sample_like_sets(generator, wanted: list[tuple[np.ndarray, int]], executor=None) -> list[data.Split]:
    """`synthetic.sample_like(generator, labels, seed)` for each (labels, seed) in `wanted`: the same images, in order.

    With an `executor` (a medgen.workers pool) the per-class parts are shared between this process and one
    worker: the largest part goes to the worker, each next one to the side with fewer images so far. A part
    is seeded on its own (seed + class), so which process draws it changes no pixel."""
    sampler = synthetic.as_sampler(generator)
    parts = [
        (i, c, int(k), seed + c)
        for i, (labels, seed) in enumerate(wanted)
        for c, k in enumerate(np.bincount(labels, minlength=sampler.n_classes))
        if k > 0
    ]
    theirs: list[tuple] = []
    if executor is not None and len(parts) > 1:
        load = {"theirs": 0, "mine": 0}
        for part in sorted(parts, key=lambda p: -p[2]):
            side = "theirs" if not theirs or load["theirs"] < load["mine"] else "mine"
            load[side] += part[2]
            if side == "theirs":
                theirs.append(part)
    mine = [p for p in parts if p not in theirs]
    future = executor.submit(_draw_parts, sampler, theirs) if theirs else None
    drawn = dict(zip([p[:2] for p in mine], _draw_parts(sampler, mine)))
    if future is not None:
        drawn.update(zip([p[:2] for p in theirs], future.result()))
    sets = []
    for i in range(len(wanted)):
        chunks = [drawn[p[:2]] for p in parts if p[0] == i]
        sets.append(data.Split(np.concatenate([s.images for s in chunks]), np.concatenate([s.labels for s in chunks])))
    return sets


def _draw_parts(sampler, parts: list[tuple[int, int, int, int]]) -> list[data.Split]:
    """Each (set, class, count, seed) part drawn as `sample_like` draws it."""
    return [synthetic.sample(sampler, [c], k, seed) for _, c, k, seed in parts]


def evaluate(
    cfg: Config, generator, real: Real, sets: tuple[data.Split, data.Split] | None = None
) -> tuple[dict[str, Any], data.Split]:
    """The quality report of a generator or sampler (`metrics.generation_report`: FD/KID ratios, C2ST,
    precision/recall/density/coverage, memorisation; overall and per class) from the `judged_sets` (drawn
    here unless given). Returns it with the train-sized synthetic set."""
    seed = cfg.seed + 1000
    like_heldout, like_train = sets or judged_sets(cfg, generator, real)
    feats = lambda split: extract_features(real.net, data.to_tensors(split)[0])  # noqa: E731
    train = (real.train_features, real.dataset.train.labels)
    heldout, fake = (real.heldout_features, real.heldout.labels), (feats(like_heldout), like_heldout.labels)
    c2st = feats(like_train)
    pool = (np.concatenate([fake[0], c2st]), np.concatenate([fake[1], like_train.labels]))  # for average_fd
    counts = [np.bincount(y, minlength=real.dataset.n_classes) for y in (train[1], heldout[1])]
    if min(c.min() for c in counts) > MIN_PER_CLASS:
        pixels = (real.dataset.train.images, real.heldout.images, like_train.images)
        report = metrics.generation_report(train, heldout, fake, (c2st, like_train.labels), pixels, cfg.seed)
        average_fd(report, real, fake, pool, cfg.generate.fd_draws, seed)
        return report, like_train
    # a class too small for per-class precision/recall (k = 3) or a 5-fold C2ST: the overall figures only
    log.warning(
        "generate: a class has <= %d train or held-out images: no per-class P/R, C2ST, memorisation", MIN_PER_CLASS
    )
    report = metrics.generation_quality(train, heldout, fake, c2st, seed=cfg.seed)
    px = metrics.flat_pixels
    memo = metrics.memorization(px(real.dataset.train.images), px(real.heldout.images), px(like_train.images))
    report.update(memorization_share=memo["memorization_share"], memorization_threshold=memo["threshold"])
    average_fd(report, real, fake, pool, cfg.generate.fd_draws, seed)
    return report, like_train


def average_fd(
    report: dict[str, Any],
    real: Real,
    first: tuple[np.ndarray, np.ndarray],
    pool: tuple[np.ndarray, np.ndarray],
    draws: int,
    seed: int,
) -> None:
    """Make the report's FD(train, synthetic), overall and per class, the mean over `draws` held-out-sized
    synthetic sets, and add the 2.5-97.5 percentile range of the ratio over them (`fd_ratio_range95`) and
    `fd_draws`.

    The sets are `first` (the report's own (features, labels)) and draws - 1 class-stratified subsets, without
    replacement, of `pool`: every synthetic image the judge already drew (`first` plus the train-sized set), so
    no generator is sampled again (for the diffusion model a fresh draw costs 20-90 CPU-s). Each subset is a
    held-out-sized draw from the generator, so the mean estimates the same FD as one draw does, with less noise:
    on one generator a single draw's overall ratio ranged 2.6-8.6x over 20 independent draws. The subsets
    overlap, so their range understates the spread of independent draws (docs/diffusion.md). The real-vs-real
    yardstick is one fixed set (the held-out images); only the synthetic side is redrawn, at the same size, so
    both carry the same small-sample bias."""
    feats, labels = pool
    want = np.bincount(first[1], minlength=int(labels.max()) + 1)
    rng = np.random.default_rng(seed)
    sets = [first]
    for _ in range(1, draws):
        pick = np.concatenate(
            [rng.choice(np.flatnonzero(labels == c), int(k), replace=False) for c, k in enumerate(want) if k > 0]
        )
        sets.append((feats[pick], labels[pick]))
    train_y = real.dataset.train.labels
    groups = {"all": (report, None)} | {name: (entry, int(name)) for name, entry in report["per_class"].items()}
    for target, label in groups.values():
        ref = real.train_features if label is None else real.train_features[train_y == label]
        fds = [metrics.frechet_distance(ref, f if label is None else f[y == label]) for f, y in sets]
        ratios = [metrics.ratio_to_real(fd, target["fd_real_vs_real"]) for fd in fds]
        target["fd_real_vs_synth"] = float(np.mean(fds))
        target["fd_ratio"] = metrics.ratio_to_real(target["fd_real_vs_synth"], target["fd_real_vs_real"])
        target["fd_ratio_range95"] = [float(q) for q in np.percentile(ratios, [2.5, 97.5])]
    report["fd_draws"] = draws


@dataclass
class Candidate:
    """One trained generator competing to be the stage's chosen one."""

    name: str  # the variant: cdcgan | acgan | wgan-gp | ddpm
    family: str  # gan | diffusion
    module: torch.nn.Module  # what training.save_model stores
    init_kwargs: dict[str, Any]
    sampler: Any  # medgen.synthetic sampler of the module with its chosen sampling settings
    config: dict[str, Any]  # checkpoint config additions (chosen settings)
    history: list[dict]
    best_epoch: int
    result: dict[str, Any]  # search summary and chosen settings for the metrics file
    figure: Any = None  # history -> matplotlib figure (plots.gan_history, ddpm_training.history_figure)
    report: dict[str, Any] | None = None  # `judge` fills these
    selection: dict[str, float] | None = None
    seconds: float = 0.0
    val_fd: float = float("nan")  # val-sized FD (seed cfg.seed) as served: export's champion rule compares it


def judge(cfg: Config, candidate: Candidate, real: Real, executor=None) -> None:
    """Fill the candidate's quality report (held-out and test images: reported, never chosen on) and its
    selection figures, from train and val images only: `fd` = FD between the train images and a
    train-sized synthetic set (train's class counts; the set the C2ST and the memorisation check use), and
    the memorisation share with val images as the yardstick. Writes the montage of its 16
    sample/training pairs closest in pixel space. `executor`: see `judged_sets`."""
    n = len(real.heldout.labels) + len(real.dataset.train.labels)
    log.info("generate: judging %s (%d samples)", candidate.name, n)
    sets = judged_sets(cfg, candidate.sampler, real, executor)
    candidate.report, like_train = evaluate(cfg, candidate.sampler, real, sets)
    train_px, synthetic_px = metrics.flat_pixels(real.dataset.train.images), metrics.flat_pixels(like_train.images)
    memo = metrics.memorization(train_px, metrics.flat_pixels(real.dataset.val.images), synthetic_px)
    features = extract_features(real.net, data.to_tensors(like_train)[0])
    candidate.selection = {
        "fd": metrics.frechet_distance(real.train_features, features),
        "n_samples": len(like_train.labels),
        "val_memorization_share": memo["memorization_share"],
        "val_memorization_threshold": memo["threshold"],
    }
    pairs = metrics.closest_pairs(train_px, synthetic_px)
    image = plots.nearest_pairs_montage(like_train.images, real.dataset.train.images, pairs)
    plots.save_png(image, Path(cfg.generate.plots_dir) / f"closest_pairs_{candidate.name}.png")


def choose(candidates: list[Candidate], select: str, max_memorization: float) -> tuple[Candidate, str]:
    """The chosen generator and why. `select` gan|ddpm forces a family; auto: the lowest selection FD
    (train-sized synthetic set against the train images: at val size, 78 samples, FD's small-sample bias
    favoured a low-diversity sampler) among candidates whose val memorisation share is <= max_memorization
    (a copier cannot win); when every candidate is over it, the least memorising one."""
    if select != "auto":
        family = "diffusion" if select == "ddpm" else "gan"
        (chosen,) = [c for c in candidates if c.family == family]
        return chosen, f"generate.select = {select}"
    fair = [c for c in candidates if c.selection["val_memorization_share"] <= max_memorization]
    if fair:
        chosen = min(fair, key=lambda c: c.selection["fd"])
        return chosen, (
            "lowest FD of a train-sized synthetic set against the train images among candidates with val "
            f"memorisation share <= {max_memorization:g}"
        )
    chosen = min(candidates, key=lambda c: c.selection["val_memorization_share"])
    return chosen, f"every candidate's val memorisation share > {max_memorization:g}: the least memorising"


def variant_entry(candidate: Candidate) -> dict[str, Any]:
    """A candidate's block of metrics/generate.json `variants`: its report, selection figures and settings."""
    return {"family": candidate.family, **candidate.report, "selection": candidate.selection, **candidate.result}


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


def write_outputs(cfg: Config, chosen: Candidate) -> list[Path]:
    """The chosen generator's samples npz, per-class final grids, history figure and history.json; returns
    the figure paths."""
    gcfg = cfg.generate
    labels = requested_labels(gcfg, chosen.sampler.n_classes)
    log.info(
        "generate: %d samples of %s for %s",
        len(labels) * gcfg.samples_per_class,
        chosen.name,
        synthetic.samples_path(cfg),
    )
    samples = synthetic.sample(chosen.sampler, labels, gcfg.samples_per_class, cfg.seed)
    synthetic.save_samples(samples, synthetic.samples_path(cfg))
    plots_dir = Path(gcfg.plots_dir)
    figures = [plots.save_figure(chosen.figure(chosen.history), plots_dir / "losses.png")]
    write_json(plots_dir / "history.json", [{k: v for k, v in row.items() if v == v} for row in chosen.history])
    for label in labels:
        images = samples.images[samples.labels == label][:64]
        figures.append(plots.save_png(plots.montage(images, columns=8), plots_dir / f"samples_class_{label}.png"))
    return figures
