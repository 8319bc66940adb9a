"""Stage `export`: the champion classifier, the augmented classifier (when it exists) and the generator
(EMA weights) to ONNX, each with a metadata JSON, checked against PyTorch and registered in MLflow.

Inputs : export.classifier_checkpoint, export.generator_checkpoint, export.augmented_checkpoint
         (optional), all written by medgen.training.save_model; data/prepared/<flag>.npz (parity inputs).
Outputs: <export.out_dir>/{classifier,classifier_augmented,generator}.{onnx,json}, export.metrics
         (`{"classifier": {"max_abs_diff": ...}, "generator": {"max_abs_diff": ...}}`).
MLflow : experiment medgen/<flag>/export; registered models medgen-classifier[-augmented],
         medgen-generator: a new version every run; alias export.alias (default `champion`) moves to it
         only forward (default profile, same flag, at least as good on validation: medgen.registry),
         otherwise alias `candidate`, with the reason in the log and the version's tags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

from medgen import data, onnx_export, registry, tracking
from medgen.config import Config
from medgen.errors import MedgenError
from medgen.io import write_json
from medgen.training import load_checkpoint, load_model, set_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One model to export: its metrics key, file stem, registry name and checkpoint."""

    key: str
    stem: str
    registry_name: str
    checkpoint: Path
    kind: str  # "classifier" | "generator"


def targets(cfg: Config) -> list[Target]:
    """Classifier and generator always (missing is an error); the augmented classifier when it exists."""
    e = cfg.export
    chosen = [Target("classifier", "classifier", "medgen-classifier", Path(e.classifier_checkpoint), "classifier")]
    if e.augmented_checkpoint and Path(e.augmented_checkpoint).exists():
        chosen.append(Target("augmented_classifier", "classifier_augmented", "medgen-classifier-augmented",
                             Path(e.augmented_checkpoint), "classifier"))
    chosen.append(Target("generator", "generator", "medgen-generator", Path(e.generator_checkpoint), "generator"))
    for target in chosen:
        if not target.checkpoint.exists():
            raise MedgenError(f"{target.checkpoint}: {target.key} checkpoint not found (export.{target.key}_checkpoint; "
                              "run the stage that trains it first)")
    return chosen


def _classifier_spec(model: torch.nn.Module, checkpoint: dict[str, Any], real: np.ndarray, cfg: Config) -> tuple:
    config = checkpoint.get("config") or {}
    size = int(config.get("input_size", real.shape[-1]))
    if size != real.shape[-1]:
        raise MedgenError(f"classifier input_size={size} but the prepared images are {real.shape[-1]}px")
    n_classes = int(config.get("n_classes") or model(torch.from_numpy(real[:1])).shape[1])
    meta = {"class_names": onnx_export.class_names_of(config, n_classes), "n_classes": n_classes, "input_size": size,
            "inputs": [{"name": "images", "shape": ["batch", 1, size, size], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": ["batch", n_classes], "dtype": "float32"}]}
    batches = onnx_export.classifier_batches(real, cfg.export.parity_batches)
    return meta, (torch.from_numpy(real[:2]),), ("images",), ("logits",), batches


def _generator_spec(model: torch.nn.Module, checkpoint: dict[str, Any], cfg: Config) -> tuple:
    config = checkpoint.get("config") or {}
    latent, n_classes = int(config["latent_dim"]), int(config["n_classes"])
    batches = onnx_export.generator_batches(latent, n_classes, cfg.export.parity_batches, cfg.seed)
    example = (torch.from_numpy(batches[0]["z"][:1].repeat(2, 0)), torch.zeros(2, dtype=torch.int64))
    with torch.no_grad():
        size = int(model(*example).shape[-1])
    meta = {"class_names": onnx_export.class_names_of(config, n_classes), "n_classes": n_classes, "latent_dim": latent,
            "latent_distribution": "standard normal N(0, I), float32", "input_size": size,
            "inputs": [{"name": "z", "shape": ["batch", latent], "dtype": "float32"},
                       {"name": "labels", "shape": ["batch"], "dtype": "int64"}],
            "outputs": [{"name": "images", "shape": ["batch", 1, size, size], "dtype": "float32", "range": [-1, 1]}]}
    return meta, example, ("z", "labels"), ("images",), batches


def export_one(target: Target, cfg: Config, real: np.ndarray, run_id: str) -> tuple[dict[str, Any], Path, Path]:
    """Export, check and compare one model; the ONNX file is removed again when parity fails."""
    model, checkpoint = load_model(target.checkpoint)
    if target.kind == "classifier":
        spec, example, inputs, outputs, batches = _classifier_spec(model, checkpoint, real, cfg)
    else:
        spec, example, inputs, outputs, batches = _generator_spec(model, checkpoint, cfg)
    meta = {**onnx_export.base_metadata(target.kind, target.checkpoint, checkpoint, cfg.export.opset), **spec,
            "name": target.stem, "file": f"{target.stem}.onnx", "registry_name": target.registry_name,
            "export_run_id": run_id}
    out = Path(cfg.export.out_dir)
    onnx_path = onnx_export.export_onnx(model, example, out / f"{target.stem}.onnx", inputs, outputs, cfg.export.opset, meta)
    diffs = onnx_export.max_abs_diff(onnx_export.session(onnx_path), model, batches)
    if not diffs["max"] <= cfg.export.parity_tolerance:  # `not <=` also catches NaN
        onnx_path.unlink()
        raise MedgenError(f"{target.key}: onnxruntime differs from PyTorch by {diffs['max']:.3g} "
                          f"> export.parity_tolerance={cfg.export.parity_tolerance:g} (batches {diffs})")
    result = {"max_abs_diff": diffs["max"], "max_abs_diff_by_batch": {k: v for k, v in diffs.items() if k != "max"}}
    meta.update(parity=result, sha256=onnx_export.file_sha256(onnx_path))
    json_path = write_json(out / f"{target.stem}.json", meta)
    return result, onnx_path, json_path


def run(cfg: Config) -> dict[str, Any]:
    set_seed(cfg.seed)
    with tracking.stage_run(cfg, "export", params_sections=("export",)) as run:
        chosen = targets(cfg)  # missing checkpoints fail before any work
        test_images, _ = data.to_tensors(data.load_prepared(cfg.data).test)
        real = test_images.numpy()
        metrics: dict[str, Any] = {}
        for target in chosen:
            result, onnx_path, json_path = export_one(target, cfg, real, run.info.run_id)
            if cfg.export.register:
                version = register(target, cfg, onnx_path, json_path)
                result = {**result, "registered_version": int(version)}
            tracking.log_files([onnx_path, json_path], "onnx")
            metrics[target.key] = result
            log.info("exported %s: max |ort - torch| = %.2e", target.key, result["max_abs_diff"])
        write_json(cfg.export.metrics, metrics)
        mlflow.log_metrics(tracking.numeric_metrics(metrics))
    return metrics


def register(target: Target, cfg: Config, onnx_path: Path, json_path: Path) -> str:
    """A new registry version; the champion alias moves to it only forward (medgen.registry.settle)."""
    version = tracking.register_onnx(onnx_path, target.registry_name, [json_path])
    new = registry.standing(target.kind, load_checkpoint(target.checkpoint), cfg)
    decision = registry.settle(cfg, target.registry_name, version, new)
    meta = {**_read(json_path), "registered": {"name": target.registry_name, "version": version,
                                               "alias": decision["status"], "reason": decision["reason"]}}
    write_json(json_path, meta)
    return version


def _read(path: Path) -> dict[str, Any]:
    from medgen.io import read_json

    return read_json(path)
