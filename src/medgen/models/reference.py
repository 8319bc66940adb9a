"""Small reference models that follow the export contract, for tests and for exercising `export`/serving
before the real classifier and generator exist. They use the layers the real ones use (Conv, BatchNorm,
ConvTranspose, Embedding) because those are where ONNX exports have silently diverged before.

Contract (what `medgen.stages.export` and the service rely on), for images of C channels and side S
(S divisible by 4):
- classifier: forward(x: (N, C, S, S) float in [-1, 1]) -> logits (N, n_classes)
- generator : forward(z: (N, latent_dim) float32, labels: (N,) int64) -> (N, C, S, S) in [-1, 1]
"""

from __future__ import annotations

import torch
from torch import nn


class ReferenceClassifier(nn.Module):
    """Two conv blocks + linear head. (N,C,S,S) -> (N,w,S/2,S/2) -> (N,2w,S/4,S/4) -> (N,n_classes)."""

    def __init__(self, n_classes: int = 2, width: int = 16, channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # (N,w,S/2,S/2)
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # (N,2w,S/4,S/4)
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        flat = 2 * width * (image_size // 4) ** 2
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(flat, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ReferenceGenerator(nn.Module):
    """Conditional DCGAN-style generator: [z, embed(label)] -> (N,2w,S/4,S/4) -> (N,w,S/2,S/2) -> (N,C,S,S)."""

    def __init__(
        self, latent_dim: int = 16, n_classes: int = 2, width: int = 16, channels: int = 1, image_size: int = 28
    ) -> None:
        super().__init__()
        self.width, self.quarter = width, image_size // 4
        self.embed = nn.Embedding(n_classes, latent_dim)
        self.project = nn.Sequential(nn.Linear(2 * latent_dim, 2 * width * self.quarter**2), nn.ReLU())
        self.decode = nn.Sequential(
            # (N,w,S/2,S/2)
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
            nn.Tanh(),  # (N,C,S,S)
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(labels)], dim=1))
        return self.decode(h.view(-1, 2 * self.width, self.quarter, self.quarter))
