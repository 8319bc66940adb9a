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


TINY_DENOISER = {"n_classes": 2, "width": 8, "norm_groups": 4, "channel_mult": [1, 2], "attention_levels": [1]}


def save_denoiser(
    path: str | Path,
    seed: int = 0,
    steps: int = 4,
    guidance: float = 1.0,
    profile: str | None = "full",
    metrics: dict | None = None,
) -> torch.nn.Module:
    """A tiny ClassConditionalUNet saved as the generate stage saves a chosen diffusion generator; random weights
    that make every layer count (a fresh UNet's output layer is zero). Returns the model (eval mode)."""
    from medgen.models.diffusion import ClassConditionalUNet

    torch.manual_seed(seed)
    model = ClassConditionalUNet(**TINY_DENOISER).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    config = {
        "variant": "ddpm",
        "family": "diffusion",
        "sampler_steps": steps,
        "guidance": guidance,
        "n_classes": 2,
        "class_names": CLASS_NAMES,
        "image_shape": [1, 28, 28],
        "flag": "breastmnist",
        **_recorded(profile),
    }
    save_model(path, model, dict(TINY_DENOISER), config=config, metrics=metrics or {"fd_ratio": 3.0, "val_fd": 2.5})
    return model


if __name__ == "__main__":
    classifier, generator = sys.argv[1:3]
    print(save_classifier(classifier), save_generator(generator))
