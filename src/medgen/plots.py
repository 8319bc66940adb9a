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


def training_curves(histories: dict[int, list[dict]]):
    """Per-epoch train/val loss and accuracy, one line per seed: {seed: [{"epoch", "train_loss", ...}]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for seed, rows in histories.items():
        epochs = [r["epoch"] for r in rows]
        for ax, metric in zip(axes, ("loss", "acc")):
            (line,) = ax.plot(epochs, [r[f"train_{metric}"] for r in rows], label=f"train (seed {seed})")
            ax.plot(epochs, [r[f"val_{metric}"] for r in rows], "--", color=line.get_color(), label=f"val (seed {seed})")
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
