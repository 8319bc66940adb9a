"""Classifiers for 1-channel 28x28 images in [-1, 1]: torchvision ResNet-18 and an encoder + head.

Both map (N, 1, 28, 28) -> logits (N, n_classes) and expose `backbone` (the feature extractor, which the
transfer recipe freezes and unfreezes) and `head` (dropout + linear).

ResNet-18 stems (what happens before layer1; spatial size of layer1's input for a 28x28 image):
  * "standard": ImageNet's 7x7 stride-2 conv + 3x3 stride-2 max-pool -> 7x7 (cheapest; layer4 sees 1x1).
  * "pool":     3x3 stride-1 conv + the max-pool -> 14x14 (about 4x the conv work of "standard").
  * "cifar":    3x3 stride-1 conv, no max-pool -> 28x28 (the CIFAR/MedMNIST variant; ~16x the work).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from torchvision.models import resnet18

from medgen.config import CLASSIFIER_INITS as INITS
from medgen.config import CLASSIFIER_STEMS as STEMS

ENCODER_PREFIXES = ("medgen.",)  # an encoder class named in a checkpoint must be ours


class ResNetClassifier(nn.Module):
    """torchvision ResNet-18 for (N, 1, 28, 28) -> logits (N, n_classes), dropout before the linear head."""

    def __init__(self, n_classes: int, stem: str = "standard", dropout: float = 0.0, init: str = "default"):
        super().__init__()
        if stem not in STEMS or init not in INITS:
            raise ValueError(f"stem must be one of {STEMS} and init one of {INITS}, got {stem!r}, {init!r}")
        net = resnet18(weights=None, num_classes=n_classes)
        if stem == "standard":
            net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # (N,64,14,14)
        else:
            net.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)  # (N,64,28,28)
        if stem == "cifar":
            net.maxpool = nn.Identity()
        self.out_features = net.fc.in_features  # 512
        net.fc = nn.Identity()
        self.backbone = net  # (N,1,28,28) -> (N,512) after global average pooling
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.out_features, n_classes))
        if init == "xavier":
            xavier_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (N, n_classes)


class EncoderClassifier(nn.Module):
    """A feature encoder (N, 1, 28, 28) -> (N, F) followed by dropout and a linear head -> (N, n_classes).

    The encoder is rebuilt from its class path and constructor kwargs (the `model` spec that
    medgen.training.save_model records), so this module itself stays loadable with load_model.
    """

    def __init__(self, encoder_class: str, encoder_kwargs: dict, n_classes: int, dropout: float = 0.0, init: str = "default"):
        super().__init__()
        if not encoder_class.startswith(ENCODER_PREFIXES):
            raise ValueError(f"refusing to import encoder class {encoder_class!r} (must be under {ENCODER_PREFIXES})")
        module_name, _, class_name = encoder_class.rpartition(".")
        self.backbone = getattr(importlib.import_module(module_name), class_name)(**encoder_kwargs)
        self.out_features = int(self.backbone.out_features)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.out_features, n_classes))
        if init == "xavier":
            xavier_init(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TinyEncoder(nn.Module):
    """A small conv encoder with the represent stage's contract: (N, 1, 28, 28) in [-1, 1] -> (N, out_features).

    An example and test double for the transfer option; the represent stage ships its own encoders.
    """

    def __init__(self, out_features: int = 32, width: int = 16):
        super().__init__()
        self.out_features = out_features
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1), nn.ReLU(),  # (N, w, 14, 14)
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),  # (N, 2w, 7, 7)
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),  # (N, 2w)
            nn.Linear(2 * width, out_features),  # (N, F)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def xavier_init(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases for every conv and linear layer (reference report 003)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
