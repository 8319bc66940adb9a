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


def arms_figure(per_arm: dict[str, dict[str, list[float]]]):
    """One panel per metric: each arm's per-seed test values (dots) and mean ± std (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(per_arm)
    metric_names = list(next(iter(per_arm.values())))
    fig, axes = plt.subplots(1, len(metric_names), figsize=(4.5 * len(metric_names), 4), squeeze=False)
    for ax, name in zip(axes[0], metric_names):
        for i, arm in enumerate(arms):
            values = np.asarray(per_arm[arm][name], dtype=float)
            std = values.std(ddof=1) if len(values) > 1 else 0.0
            ax.errorbar(i, values.mean(), yerr=std, fmt="s", capsize=6, color="C0")
            ax.scatter(np.full(len(values), i + 0.15), values, s=14, color="C1", zorder=3)
        ax.set_xticks(range(len(arms)), arms, rotation=20)
        ax.set_title(f"test {name} (mean ± std over seeds)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
