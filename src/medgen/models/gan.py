"""Conditional DCGAN for (C, S, S) images, C = 1 or 3, S = 28..224 (padded to a power-of-two canvas inside).

Follows the DCGAN paper's rules (Radford et al., 2016, sec. 3): strided (transposed) convolutions
instead of pooling, batch norm in G and D (not on G's output or D's input layer), ReLU in G with a tanh
output, LeakyReLU(0.2) in D, weights from N(0, 0.02). Variants (`VARIANTS`):

* ``cdcgan``  - the label enters G as a learned embedding concatenated to z, and D as one-hot maps
  concatenated to the image channels (Mirza & Osindero, 2014).
* ``acgan``   - D gets the image only and predicts the class with an auxiliary head (Odena et al., 2017);
  the label reaches D through its loss: given as input, the head could read it off the input maps.
* ``wgan-gp`` - a conditional critic (label maps as in cdcgan) with no batch norm (the gradient penalty is
  per sample, batch statistics would couple samples; Gulrajani et al., 2017 sec. 4) and a linear output.

Sizes: G grows a 4x4 map by stride-2 stages to the smallest canvas 4 * 2^k >= S (28 and 32 -> 32 in three
stages, 64 -> 64 in four, 128 -> 128, 224 -> 256 in six) and crops the centre S x S; D pads its input back
to the canvas with black and shrinks it by as many stages to 4x4. Widths double per stage away from the
image (G: ..., 4c, 2c, c; D: c, 2c, 4c, ...), capped at 8c. At 28 px this is exactly the three-stage DCGAN
of the paper's 32x32 setting (same layers in the same order, so the same random initialisation).
Images are float in [-1, 1]; callers never see the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("cdcgan", "acgan", "wgan-gp")
_START = 4  # spatial side of G's first map and D's last
_MIN_STAGES = 3  # 4 -> 32: the DCGAN layout every smaller image (28 px) is padded into
_MAX_WIDTH = 8  # widths are capped at 8 * channels (deep canvases would otherwise reach 32c)


def canvas(image_size: int) -> tuple[int, int, int]:
    """(stride-2 stages, canvas side, padding per border) for images of side `image_size`."""
    stages = _MIN_STAGES
    while _START * 2**stages < image_size:
        stages += 1
    side = _START * 2**stages
    if (side - image_size) % 2:
        raise ValueError(f"image_size={image_size} must be even (it is centred on a {side}px canvas)")
    return stages, side, (side - image_size) // 2


def _width(channels: int, level: int) -> int:
    """Width `level` stages away from the image side (0 = the layer next to the image)."""
    return channels * min(2**level, _MAX_WIDTH)


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); batch-norm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _check_labels(labels: torch.Tensor, n_classes: int) -> None:
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return  # data-dependent checks cannot be traced; ONNX callers validate before running
    if labels.dtype != torch.int64 or labels.ndim != 1:
        raise ValueError(f"labels must be int64 of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1}, got {int(labels.min())}..{int(labels.max())}")


class Generator(nn.Module):
    """G(z: (N, latent_dim) float, labels: (N,) int64) -> (N, image_channels, image_size, image_size) in [-1, 1]."""

    def __init__(
        self,
        latent_dim: int = 100,
        n_classes: int = 2,
        channels: int = 64,
        embed_dim: int = 16,
        image_size: int = 28,
        image_channels: int = 1,
    ):
        super().__init__()
        self.latent_dim, self.n_classes = latent_dim, n_classes
        self.image_size, self.image_channels = image_size, image_channels
        stages, _, self.pad = canvas(image_size)
        widths = [_width(channels, level) for level in reversed(range(stages))]  # e.g. 4c, 2c, c
        self.embed = nn.Embedding(n_classes, embed_dim)
        # (N, latent+embed, 1, 1) -> (N, widths[0], 4, 4)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim + embed_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for w_in, w_out in zip(widths, widths[1:]):  # each doubles the side: 4 -> 8 -> 16 -> ...
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        # -> (N, C, canvas, canvas); no batch norm on the output layer (DCGAN rule)
        layers += [nn.ConvTranspose2d(widths[-1], image_channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_labels(labels, self.n_classes)
        h = torch.cat([z, self.embed(labels)], dim=1)  # (N, latent+embed)
        out = self.net(h[:, :, None, None])  # (N, C, canvas, canvas)
        p, s = self.pad, self.image_size
        return out[:, :, p : p + s, p : p + s]  # (N, C, S, S)


class Discriminator(nn.Module):
    """D(x: (N, C, S, S), labels: (N,) int64) -> (logit (N,), class logits (N, n_classes) or None).

    The class logits exist for the acgan variant only.
    """

    def __init__(
        self,
        variant: str = "cdcgan",
        n_classes: int = 2,
        channels: int = 64,
        spectral_norm: bool = False,
        image_size: int = 28,
        image_channels: int = 1,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.n_classes = variant, n_classes
        self.conditional_input = variant != "acgan"
        stages, _, self.pad = canvas(image_size)
        widths = [_width(channels, level) for level in range(stages)]  # e.g. c, 2c, 4c
        in_ch = image_channels + (n_classes if variant != "acgan" else 0)
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)

        def norm(ch: int) -> nn.Module:
            # WGAN-GP: no batch norm in the critic; layer norm over (C, H, W) instead
            return nn.GroupNorm(1, ch) if variant == "wgan-gp" else nn.BatchNorm2d(ch)

        # (N, in_ch, canvas, canvas) -> (N, c, canvas/2, canvas/2); no norm on the input layer (DCGAN rule)
        layers: list[nn.Module] = [sn(nn.Conv2d(in_ch, widths[0], 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        for w_in, w_out in zip(widths, widths[1:]):  # each halves the side, down to 4x4
            layers += [sn(nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False)), norm(w_out), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)  # -> (N, widths[-1], 4, 4)
        self.adv = sn(nn.Conv2d(widths[-1], 1, 4, 1, 0))  # (N, w, 4, 4) -> (N, 1, 1, 1)
        self.aux = nn.Conv2d(widths[-1], n_classes, 4, 1, 0) if variant == "acgan" else None  # -> (N, K, 1, 1)
        self.apply(init_dcgan_weights)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, value=-1.0)  # (N, C, canvas, canvas), padded with black
        if self.conditional_input:
            _check_labels(labels, self.n_classes)
            maps = F.one_hot(labels, self.n_classes).to(x.dtype)[:, :, None, None]  # (N, K, 1, 1)
            x = torch.cat([x, maps.expand(-1, -1, x.shape[2], x.shape[3])], dim=1)  # (N, C+K, canvas, canvas)
        h = self.features(x)  # (N, w, 4, 4)
        logit = self.adv(h).flatten()  # (N,)
        classes = self.aux(h).flatten(1) if self.aux is not None else None  # (N, K)
        return logit, classes


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """DiffAugment (Zhao et al., 2020) for images in [-1, 1]: (N, C, H, W) -> same shape.

    Differentiable, so D sees augmented reals *and* fakes and G's gradient flows through the same
    transform: D cannot memorise the 546 training images as easily, and G is not taught the augmentation.
    """
    for name in policy:
        x = _AUGMENTS[name](x)
    return x


def _brightness(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.rand(x.size(0), 1, 1, 1, device=x.device) - 0.5)


def _contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(x.size(0), 1, 1, 1, device=x.device) + 0.5) + mean


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    tx = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    ty = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    b, gx, gy = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(h, device=x.device),
        torch.arange(w, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # out-of-frame pixels are black
    return padded.permute(0, 2, 3, 1)[b, gx, gy].permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ox = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), device=x.device)
    oy = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), device=x.device)
    b, gx, gy = torch.meshgrid(
        torch.arange(n, device=x.device),
        torch.arange(ch, device=x.device),
        torch.arange(cw, device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[b, gx, gy] = 0
    return x * mask.unsqueeze(1)


_AUGMENTS = {"brightness": _brightness, "contrast": _contrast, "translation": _translation, "cutout": _cutout}
AUGMENT_POLICIES = tuple(_AUGMENTS)
