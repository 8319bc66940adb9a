"""Conditional DCGAN for 28x28 grey images (padded to 32x32 inside the networks).

Follows the DCGAN paper's rules (Radford et al., 2016, sec. 3): strided (transposed) convolutions
instead of pooling, batch norm in G and D (not on G's output or D's input layer), ReLU in G with a tanh
output, LeakyReLU(0.2) in D, weights from N(0, 0.02). Variants (`VARIANTS`):

* ``cdcgan``  - the label enters G as a learned embedding concatenated to z, and D as one-hot maps
  concatenated to the image channels (Mirza & Osindero, 2014).
* ``acgan``   - D gets the image only and predicts the class with an auxiliary head (Odena et al., 2017);
  the label reaches D through its loss: given as input, the head could read it off the input maps.
* ``wgan-gp`` - a conditional critic (label maps as in cdcgan) with no batch norm (the gradient penalty is
  per sample, batch statistics would couple samples; Gulrajani et al., 2017 sec. 4) and a linear output.

Images are float in [-1, 1]; G's output is cropped back to 28x28 so callers never see the padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("cdcgan", "acgan", "wgan-gp")
IMAGE_SIZE = 28
_PAD = 2  # 28 + 2 * 2 = 32: three stride-2 stages from 4x4


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
    """G(z: (N, latent_dim) float, labels: (N,) int64) -> (N, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, n_classes: int = 2, channels: int = 64, embed_dim: int = 16):
        super().__init__()
        self.latent_dim, self.n_classes = latent_dim, n_classes
        c = channels
        self.embed = nn.Embedding(n_classes, embed_dim)
        self.net = nn.Sequential(
            # (N, latent+embed, 1, 1) -> (N, 4c, 4, 4)
            nn.ConvTranspose2d(latent_dim + embed_dim, 4 * c, 4, 1, 0, bias=False),
            nn.BatchNorm2d(4 * c),
            nn.ReLU(True),
            # -> (N, 2c, 8, 8)
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(True),
            # -> (N, c, 16, 16)
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(True),
            # -> (N, 1, 32, 32); no batch norm on the output layer (DCGAN rule)
            nn.ConvTranspose2d(c, 1, 4, 2, 1),
            nn.Tanh(),
        )
        self.apply(init_dcgan_weights)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_labels(labels, self.n_classes)
        h = torch.cat([z, self.embed(labels)], dim=1)  # (N, latent+embed)
        out = self.net(h[:, :, None, None])  # (N, 1, 32, 32)
        return out[:, :, _PAD : _PAD + IMAGE_SIZE, _PAD : _PAD + IMAGE_SIZE]  # (N, 1, 28, 28)


class Discriminator(nn.Module):
    """D(x: (N, 1, 28, 28), labels: (N,) int64) -> (logit (N,), class logits (N, n_classes) or None).

    The class logits exist for the acgan variant only.
    """

    def __init__(self, variant: str = "cdcgan", n_classes: int = 2, channels: int = 64, spectral_norm: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.n_classes = variant, n_classes
        self.conditional_input = variant != "acgan"
        c, in_ch = channels, 1 + (n_classes if variant != "acgan" else 0)
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)

        def norm(ch: int) -> nn.Module:
            # WGAN-GP: no batch norm in the critic; layer norm over (C, H, W) instead
            return nn.GroupNorm(1, ch) if variant == "wgan-gp" else nn.BatchNorm2d(ch)

        self.features = nn.Sequential(
            # (N, in_ch, 32, 32) -> (N, c, 16, 16); no norm on the input layer (DCGAN rule)
            sn(nn.Conv2d(in_ch, c, 4, 2, 1)),
            nn.LeakyReLU(0.2, True),
            # -> (N, 2c, 8, 8)
            sn(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False)),
            norm(2 * c),
            nn.LeakyReLU(0.2, True),
            # -> (N, 4c, 4, 4)
            sn(nn.Conv2d(2 * c, 4 * c, 4, 2, 1, bias=False)),
            norm(4 * c),
            nn.LeakyReLU(0.2, True),
        )
        self.adv = sn(nn.Conv2d(4 * c, 1, 4, 1, 0))  # (N, 4c, 4, 4) -> (N, 1, 1, 1)
        self.aux = nn.Conv2d(4 * c, n_classes, 4, 1, 0) if variant == "acgan" else None  # -> (N, K, 1, 1)
        self.apply(init_dcgan_weights)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = F.pad(x, (_PAD,) * 4, value=-1.0)  # (N, 1, 32, 32), padded with black
        if self.conditional_input:
            _check_labels(labels, self.n_classes)
            maps = F.one_hot(labels, self.n_classes).to(x.dtype)[:, :, None, None]  # (N, K, 1, 1)
            x = torch.cat([x, maps.expand(-1, -1, x.shape[2], x.shape[3])], dim=1)  # (N, 1+K, 32, 32)
        h = self.features(x)  # (N, 4c, 4, 4)
        logit = self.adv(h).flatten()  # (N,)
        classes = self.aux(h).flatten(1) if self.aux is not None else None  # (N, K)
        return logit, classes


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """DiffAugment (Zhao et al., 2020) for grey images in [-1, 1]: (N, 1, H, W) -> same shape.

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
        torch.arange(n, device=x.device), torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij"
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
        torch.arange(n, device=x.device), torch.arange(ch, device=x.device), torch.arange(cw, device=x.device), indexing="ij"
    )
    gx = torch.clamp(gx + ox - ch // 2, 0, h - 1)
    gy = torch.clamp(gy + oy - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[b, gx, gy] = 0
    return x * mask.unsqueeze(1)


_AUGMENTS = {"brightness": _brightness, "contrast": _contrast, "translation": _translation, "cutout": _cutout}
AUGMENT_POLICIES = tuple(_AUGMENTS)
