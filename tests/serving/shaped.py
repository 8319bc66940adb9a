"""Stand-in ONNX models of any channel count and size, exported the way the export stage does (medgen.onnx_export,
metadata JSON beside each file, manifest last), for the service's input-contract tests.

The classifier is Conv -> ReLU -> global average pool -> Linear (any C, any S); the generator maps
[z, embed(label)] through a Linear to C x S x S and a Tanh. Small and fast: their job is the contract.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from medgen import manifest, onnx_export
from medgen.params import load_config
from tests.conftest import ROOT
from tests.standins import CLASS_NAMES

LATENT = 8


class TinyClassifier(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
        )  # (N, C, S, S) -> (N, 4, S, S) -> (N, 4) -> (N, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyGenerator(nn.Module):
    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.shape = (channels, size, size)
        self.embed = nn.Embedding(2, LATENT)
        self.project = nn.Linear(2 * LATENT, channels * size * size)  # (N, 2L) -> (N, C*S*S)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.project(torch.cat([z, self.embed(labels)], dim=1))).view(-1, *self.shape)


def _export(model: nn.Module, example: tuple, folder: Path, stem: str, names: tuple, meta: dict) -> None:
    inputs, outputs = names
    onnx_export.export_onnx(model, example, folder / f"{stem}.onnx", inputs, outputs, 17, meta)
    (folder / f"{stem}.json").write_text(json.dumps(meta, indent=2, sort_keys=True))


def export_shaped(folder: Path, channels: int, size: int, record_shape: bool = True) -> Path:
    """<folder>/{classifier,generator}.{onnx,json} + manifest.json for C x S x S images. With record_shape the
    metadata states `input_shape` (as the multi-channel export will); without, only `input_size` (today's)."""
    torch.manual_seed(channels * 1000 + size)
    folder.mkdir(parents=True, exist_ok=True)
    shape = {"input_size": size, **({"input_shape": [channels, size, size]} if record_shape else {})}
    common = {"class_names": CLASS_NAMES, "n_classes": 2, "model_class": "tests.serving.shaped", **shape}
    classifier = TinyClassifier(channels).eval()
    example = (torch.rand(2, channels, size, size) * 2 - 1,)
    _export(classifier, example, folder, "classifier", (("images",), ("logits",)), {**common, "kind": "classifier"})
    generator = TinyGenerator(channels, size).eval()
    _export(
        generator,
        (torch.randn(2, LATENT), torch.zeros(2, dtype=torch.int64)),
        folder,
        "generator",
        (("z", "labels"), ("images",)),
        {**common, "kind": "generator", "latent_dim": LATENT},
    )
    manifest.write(load_config(ROOT / "params.yaml"), folder)
    return folder
