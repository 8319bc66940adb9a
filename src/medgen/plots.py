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
