"""Stand-in checkpoints that follow the export contract (medgen.models.reference), saved with
medgen.training.save_model exactly as the classify/augment/generate stages save theirs.

Dev use (e.g. to try `dvc repro export` or the service before the real models exist):
    python -m tests.standins models/classify/best.pt models/generate/generator.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from medgen.models.reference import ReferenceClassifier, ReferenceGenerator
from medgen.training import save_model

CLASS_NAMES = ["malignant", "normal, benign"]  # BreastMNIST's labels 0 and 1


def _warm_batchnorm(model: torch.nn.Module, *inputs: torch.Tensor) -> None:
    """A few train-mode passes so BatchNorm running statistics are not the identity (export must use them)."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(*inputs)
    model.eval()


def _recorded(profile: str | None) -> dict:
    """The training profile, as the real stages record it (absent: an older checkpoint)."""
    return {"profile": profile} if profile else {}


def save_classifier(
    path: str | Path,
    seed: int = 0,
    width: int = 16,
    images: torch.Tensor | None = None,
    channels: int = 1,
    size: int = 28,
    profile: str | None = None,
    metrics: dict | None = None,
) -> Path:
    torch.manual_seed(seed)
    kwargs = {"n_classes": 2, "width": width, "channels": channels, "image_size": size}
    model = ReferenceClassifier(**kwargs)
    _warm_batchnorm(model, images if images is not None else torch.rand(32, channels, size, size) * 2 - 1)
    config = {
        "n_classes": 2,
        "class_names": CLASS_NAMES,
        "input_size": size,
        "input_shape": [channels, size, size],
        "run_id": "",
        **_recorded(profile),
    }
    return save_model(path, model, kwargs, config=config, metrics=metrics or {})


def save_generator(
    path: str | Path,
    seed: int = 0,
    latent_dim: int = 16,
    width: int = 16,
    channels: int = 1,
    size: int = 28,
    profile: str | None = None,
    metrics: dict | None = None,
) -> Path:
    torch.manual_seed(seed)
    kwargs = {"latent_dim": latent_dim, "n_classes": 2, "width": width, "channels": channels, "image_size": size}
    model = ReferenceGenerator(**kwargs)
    _warm_batchnorm(model, torch.randn(32, latent_dim), torch.arange(32) % 2)
    config = {
        "latent_dim": latent_dim,
        "n_classes": 2,
        "class_names": CLASS_NAMES,
        "image_shape": [channels, size, size],
        **_recorded(profile),
    }
    return save_model(path, model, kwargs, config=config, metrics=metrics or {})


if __name__ == "__main__":
    classifier, generator = sys.argv[1:3]
    print(save_classifier(classifier), save_generator(generator))
