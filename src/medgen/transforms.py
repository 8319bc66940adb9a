"""Classic image augmentation on batches of (N, C, H, W) tensors in [-1, 1], a fresh draw per image.

The list follows reference report 003 (Keras ImageDataGenerator): horizontal flip, rotation, shift,
shear, zoom, plus brightness/contrast jitter. The geometric part is one random affine matrix per image
applied with `affine_grid`/`grid_sample` (batched: no per-image Python loop); draws come from an explicit
torch.Generator so a seed fixes every epoch's augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClassicAugmentation:
    """Magnitudes of each transform; 0 (or False) switches that transform off."""

    flip: bool = True  # horizontal flip with probability 0.5
    rotation: float = 15.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.1  # fraction of the image side, uniform in [-translate, translate] per axis
    shear: float = 0.0  # degrees, uniform in [-shear, shear]
    zoom: float = 0.2  # scale uniform in [1 - zoom, 1 + zoom]
    brightness: float = 0.1  # additive shift, fraction of the intensity range
    contrast: float = 0.1  # multiplicative factor uniform in [1 - contrast, 1 + contrast] around the image mean

    def scaled(self, strength: float) -> ClassicAugmentation:
        """Every magnitude times `strength` (flip stays as is): the one knob the search tunes."""
        zoom = min(self.zoom * strength, 0.9)  # a scale must stay positive
        return ClassicAugmentation(
            self.flip,
            self.rotation * strength,
            self.translate * strength,
            self.shear * strength,
            zoom,
            self.brightness * strength,
            min(self.contrast * strength, 0.9),
        )

    @property
    def active(self) -> bool:
        return self.flip or any(
            v > 0 for v in (self.rotation, self.translate, self.shear, self.zoom, self.brightness, self.contrast)
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> augmented (N, C, H, W) in [-1, 1]."""
        if not self.active:
            return images
        n = images.shape[0]
        out = _geometric(images, self._affine(n, generator))
        return _photometric(out, n, self.brightness, self.contrast, generator)

    def _affine(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(N, 2, 3) matrices from output to input normalised coordinates (affine_grid's convention)."""

        def uniform(half_width: float) -> torch.Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * half_width

        angle = uniform(math.radians(self.rotation))
        shear = torch.tan(uniform(math.radians(self.shear)))
        scale = 1 + uniform(self.zoom)  # >1 zooms in: sample a smaller area
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if self.flip else torch.ones(n)
        shift = torch.stack([uniform(self.translate), uniform(self.translate)], dim=1) * 2  # [-1,1] spans 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (N,2,2)
        shear_m = torch.stack(
            [torch.stack([torch.ones(n), shear], 1), torch.stack([torch.zeros(n), torch.ones(n)], 1)], 1
        )
        linear = rotate @ shear_m @ torch.diag_embed(torch.stack([flip, torch.ones(n)], 1)) / scale[:, None, None]
        return torch.cat([linear, shift[:, :, None]], dim=2)


def _geometric(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # border padding: replicate the edge instead of inventing a grey (0 = mid-grey in [-1, 1]) frame
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _photometric(
    images: torch.Tensor, n: int, brightness: float, contrast: float, generator: torch.Generator
) -> torch.Tensor:
    if brightness <= 0 and contrast <= 0:
        return images
    shape = (n, 1, 1, 1)
    factor = (1 + (torch.rand(shape, generator=generator) * 2 - 1) * contrast).to(images.device)
    shift = ((torch.rand(shape, generator=generator) * 2 - 1) * brightness * 2).to(images.device)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - mean) * factor + mean + shift).clamp(-1, 1)
