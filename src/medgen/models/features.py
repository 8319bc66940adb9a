"""A small CNN whose penultimate layer is the feature space of the generation-quality metrics.

Inception-v3 (the usual FID space) cannot be downloaded here, and ImageNet features say little about
small ultrasound images anyway. This net is trained on the real training images only, with a joint target
(class, rotation by k*90 degrees): the class alone (2 classes) would give features blind to most of
what makes an image look real; predicting the rotation (Gidaris et al., 2018) forces them to encode
orientation, texture and shape as well.
"""

from __future__ import annotations

import torch
from torch import nn

N_ROTATIONS = 4


class FeatureNet(nn.Module):
    """x: (N, C, S, S) in [-1, 1] -> logits (N, n_classes * 4); `features(x)` -> (N, feature_dim).

    Any side S works (the last block is globally average-pooled); C = in_channels.
    """

    def __init__(self, n_classes: int = 2, channels: int = 16, feature_dim: int = 64, in_channels: int = 1):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(True),  # (N, c, S, S)
            nn.MaxPool2d(2),  # (N, c, S/2, S/2)
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(True),  # (N, 2c, S/2, S/2)
            nn.MaxPool2d(2),  # (N, 2c, S/4, S/4)
            nn.Conv2d(2 * c, 4 * c, 3, padding=1),
            nn.BatchNorm2d(4 * c),
            nn.ReLU(True),  # (N, 4c, S/4, S/4)
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),  # (N, 4c)
            # (N, feature_dim): the metric space, taken before the ReLU so no unit is dead (a dead unit
            # has zero variance and makes the Fréchet distance's covariance singular)
            nn.Linear(4 * c, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, n_classes * N_ROTATIONS))  # (N, K * 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def rotate_batch(x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C, H, W), (N,) -> the 4 rotations (4N, C, H, W) and joint targets label * 4 + k (4N,)."""
    images = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(N_ROTATIONS)])
    targets = torch.cat([labels * N_ROTATIONS + k for k in range(N_ROTATIONS)])
    return images, targets
