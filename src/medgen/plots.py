"""Every figure medgen writes. Image montages use PIL (byte-stable PNGs for DVC); charts use matplotlib."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

from medgen.io import atomic_write_bytes


def montage(images: np.ndarray, columns: int | None = None, scale: int = 3, pad: int = 2) -> Image.Image:
    """Tile uint8 images (N, H, W[, C]) into one grid, upscaled `scale`x with nearest neighbour."""
    n = len(images)
    columns = columns or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    h, w = images.shape[1:3]
    channels = images.shape[3:] or ()
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, *channels), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        canvas[top : top + h, left : left + w] = image
    picture = Image.fromarray(canvas)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Save a PIL image as PNG at path, atomically; returns the path."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return atomic_write_bytes(path, buffer.getvalue())


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG (metadata stripped so identical plots give identical bytes)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


# --- represent -------------------------------------------------------------------------------------


def comparison_table(entries: dict, objective: str):
    """Methods x (latent_dim, k, cv objective, val/test scores) as a table, plus test balanced accuracy bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ("latent_dim", "k", f"cv_{objective}", "val_acc", "test_acc", "test_balanced_acc", "test_auc")
    methods = list(entries)
    cells = [[_cell(entries[m].get(c)) for c in columns] for m in methods]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 4.5 + 0.3 * len(methods)), height_ratios=(0.3 * len(methods), 3)
    )
    top.axis("off")
    table = top.table(cellText=cells, rowLabels=methods, colLabels=columns, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns))))
    table.scale(1.2, 1.4)
    values = [entries[m].get("test_balanced_acc", float("nan")) for m in methods]
    intervals = [entries[m].get("test_balanced_acc_ci95") for m in methods]
    yerr = None
    if all(intervals):  # 95% bootstrap interval over test images (medgen.stats)
        yerr = [
            [max(v - lo, 0.0) for v, (lo, _) in zip(values, intervals)],
            [max(hi - v, 0.0) for v, (_, hi) in zip(values, intervals)],
        ]
    colours = ["#888888" if m in ("pca", "isomap") else "#3b75af" for m in methods]
    bottom.bar(methods, values, yerr=yerr, capsize=4, color=colours)
    bottom.axhline(0.5, color="red", linestyle="--", linewidth=1, label="chance / majority class (0.5)")
    bottom.set_ylabel("test balanced accuracy (KNN, 95% interval)")
    bottom.set_ylim(0, 1)
    bottom.legend(loc="lower right")
    fig.suptitle("Representation study: KNN on each latent space (selected by CV on train+val, test scored once)")
    return fig


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def latent_scatter(z: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]):
    """2-D latent codes (N, 2) coloured by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for c, name in enumerate(class_names):
        points = z[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=8, alpha=0.7, label=f"{c}: {name}")
    ax.set_xlabel("z[0] (posterior mean)")
    ax.set_ylabel("z[1] (posterior mean)")
    ax.legend(loc="best", fontsize=8)
    ax.set_title("Training set in the 2-D VAE latent space")
    return fig


def posterior_histograms(mu: np.ndarray, logvar: np.ndarray):
    """Histograms of posterior means and log-variances (N, d), one line per latent dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, values, name in ((axes[0], mu, "posterior mean mu"), (axes[1], logvar, "posterior log-variance")):
        for d in range(values.shape[1]):
            ax.hist(values[:, d], bins=40, histtype="step", label=f"z[{d}]")
        ax.set_xlabel(name)
        ax.set_ylabel("training images")
        ax.legend(fontsize=8)
    axes[0].set_title("posterior means (prior: N(0, 1))")
    axes[1].set_title("posterior log-variances (prior: 0)")
    return fig


def reconstruction_rows(rows: dict[str, np.ndarray]):
    """One strip per named row of uint8 images (n, H, W): originals and each model's reconstructions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.6 * len(rows)), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows.items()):
        ax.imshow(np.asarray(montage(images, columns=len(images), scale=1)), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    fig.suptitle("Real test images and their reconstructions")
    return fig


def training_curves(histories: dict[int, list[dict]]):
    """Per-epoch train (and val, when recorded) loss and accuracy, one line per run: {seed or member: rows}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for seed, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        for ax, metric in zip(axes, ("loss", "acc")):
            (line,) = ax.plot(epochs, [r[f"train_{metric}"] for r in rows], label=f"train ({seed})")
            if all(f"val_{metric}" in r for r in rows):  # fixed-schedule fits (CV folds) have no validation
                ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "--", color=line.get_color(), label=f"val ({seed})")
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return fig


def confusion_figure(matrix: np.ndarray, class_names: tuple[str, ...], title: str = ""):
    """Counts with row = true class, column = predicted class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=30)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def roc_figure(curves: dict[str, dict[str, list[float]]]):
    """One ROC curve per entry: {label: {"fpr": [...], "tpr": [...]}}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    for label, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], label=label)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def reliability_figure(diagrams: dict[str, list[dict]]):
    """Reliability diagram: per entry {label: medgen.calibration.reliability bins}, accuracy against mean
    confidence per bin (marker area ~ images in the bin), the diagonal = perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    for label, bins in diagrams.items():
        conf, acc, n = ([b[k] for b in bins] for k in ("confidence", "accuracy", "n"))
        ax.plot(conf, acc, "-", label=label, alpha=0.8)
        ax.scatter(conf, acc, s=[8 + 2 * v for v in n], alpha=0.6)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean top probability in the bin")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title("reliability on test (15 bins)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


# --- generate


def gan_history(history: list[dict]):
    """G and D loss per epoch (left) and the validation Fréchet distance at each check (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(epochs, [row["loss_d"] for row in history], label="D")
    left.plot(epochs, [row["loss_g"] for row in history], label="G")
    left.set(xlabel="epoch", ylabel="loss", title="GAN losses")
    left.legend()
    checks = [row for row in history if "val_fd" in row]
    right.plot([row["epoch"] for row in checks], [row["val_fd"] for row in checks], marker="o")
    right.set(xlabel="epoch", ylabel="FD (feature net)", title="val-sized synthetic vs train real")
    fig.tight_layout()
    return fig


# --- augment


def arms_figure(per_arm: dict[str, dict[str, list[float]]], intervals: dict[str, dict[str, list[float]]] | None = None):
    """One panel per metric: each arm's per-seed test values (dots), their mean (square) and, when given,
    the 95% interval of that mean (bar; medgen.stats), else ± one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(per_arm)
    metric_names = list(next(iter(per_arm.values())))
    fig, axes = plt.subplots(1, len(metric_names), figsize=(4.5 * len(metric_names), 4), squeeze=False)
    for ax, name in zip(axes[0], metric_names):
        for i, arm in enumerate(arms):
            values = np.asarray(per_arm[arm][name], dtype=float)
            mean = values.mean()
            if intervals is not None:
                lo, hi = intervals[arm][name]
                yerr = [[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]]
            else:
                yerr = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.errorbar(i, mean, yerr=yerr, fmt="s", capsize=6, color="C0")
            ax.scatter(np.full(len(values), i + 0.15), values, s=14, color="C1", zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=20)
        spread = "95% interval" if intervals is not None else "± std"
        ax.set_title(f"test {name} (seeds; mean, {spread})")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# --- generate: memorisation -------------------------------------------------------------------------


def nearest_pairs_montage(
    synthetic: np.ndarray, train: np.ndarray, pairs: list[tuple[int, int, float]], columns: int = 8
) -> Image.Image:
    """The closest sample/training pairs (`metrics.closest_pairs`) as a grid: each synthetic image with its
    nearest training image directly below it, closest pair first. uint8 images (N, H, W[, C])."""
    rows = []
    for start in range(0, len(pairs), columns):
        chunk = pairs[start : start + columns]
        rows.append(np.stack([synthetic[s] for s, _, _ in chunk]))
        rows.append(np.stack([train[t] for _, t, _ in chunk]))
    width = max(len(r) for r in rows)
    blank = np.full_like(synthetic[:1], 255)  # fills the last row pair when len(pairs) % columns != 0
    padded = [np.concatenate([r, np.repeat(blank, width - len(r), axis=0)]) for r in rows]
    return montage(np.concatenate(padded), columns=width)
