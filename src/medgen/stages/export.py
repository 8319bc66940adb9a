"""Stage `export`: the champion classifier, the augmented classifier (when it exists) and the generator
(EMA weights) to ONNX, each with a metadata JSON, checked against PyTorch and registered in MLflow.

Inputs : export.classifier_checkpoint, export.generator_checkpoint, export.augmented_checkpoint
         (optional), all written by medgen.training.save_model; data/prepared/<flag>.npz (parity inputs).
Outputs: <export.out_dir>/{classifier,classifier_augmented,generator}.{onnx,json}, model_card.{json,md}
         (medgen.model_card; also on each registered version's run) and manifest.json
         (sha256 of every file, code commit, params hash, registered versions: medgen.manifest), export.metrics
         (`{"classifier": {"max_abs_diff": ...}, "generator": {"max_abs_diff": ..., "sampler": <a denoiser's>}}`).
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

from medgen import data, diffusion_onnx, manifest, model_card, onnx_export, registry, tracking
from medgen.config import Config
from medgen.errors import MedgenError
from medgen.io import write_json
from medgen.outputs import Output, output_file, output_folder
from medgen.training import load_model, set_seed

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
        chosen.append(
            Target(
                "augmented_classifier",
                "classifier_augmented",
                "medgen-classifier-augmented",
                Path(e.augmented_checkpoint),
                "classifier",
            )
        )
    chosen.append(Target("generator", "generator", "medgen-generator", Path(e.generator_checkpoint), "generator"))
    for target in chosen:
        if not target.checkpoint.exists():
            raise MedgenError(
                f"{target.checkpoint}: {target.key} checkpoint not found (export.{target.key}_checkpoint; "
                "run the stage that trains it first)"
            )
    return chosen


def _classifier_spec(model: torch.nn.Module, checkpoint: dict[str, Any], real: np.ndarray, cfg: Config) -> tuple:
    """Metadata, example input, names and parity batches of a classifier for the prepared images (N, C, S, S)."""
    config = checkpoint.get("config") or {}
    channels, size = int(real.shape[1]), int(real.shape[-1])
    # checkpoints from before input_shape was recorded were grey: [1, input_size, input_size]
    recorded = config.get("input_shape") or (
        [1, config["input_size"], config["input_size"]] if "input_size" in config else [channels, size, size]
    )
    built = [int(v) for v in recorded]
    if built != [channels, size, size]:
        raise MedgenError(
            f"classifier was trained on {built} inputs but the prepared images are "
            f"{[channels, size, size]}: rerun classify (and augment) on this data"
        )
    n_classes = int(config.get("n_classes") or model(torch.from_numpy(real[:1])).shape[1])
    meta = {
        "class_names": onnx_export.class_names_of(config, n_classes),
        "n_classes": n_classes,
        "input_size": size,
        "channels": channels,
        "input_shape": [channels, size, size],
        "normalisation": onnx_export.normalisation(channels),
        "inputs": [{"name": "images", "shape": ["batch", channels, size, size], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": ["batch", n_classes], "dtype": "float32"}],
    }
    if config.get("stem_used"):
        meta["stem"] = config["stem_used"]
    if config.get("members"):  # the classify ensemble: "logits" = log of the probabilities averaged in the graph
        meta |= {"members": config["members"], "views": config.get("tta", []), "recipe": config.get("recipe")}
    batches = onnx_export.classifier_batches(real, cfg.export.parity_batches)
    return meta, (torch.from_numpy(real[:2]),), ("images",), ("logits",), batches


def _generator_spec(model: torch.nn.Module, checkpoint: dict[str, Any], real: np.ndarray, cfg: Config) -> tuple:
    """Metadata, example inputs, names and parity batches of a generator; its images must match the data's shape."""
    config = checkpoint.get("config") or {}
    latent, n_classes = int(config["latent_dim"]), int(config["n_classes"])
    batches = onnx_export.generator_batches(latent, n_classes, cfg.export.parity_batches, cfg.seed)
    example = (torch.from_numpy(batches[0]["z"][:1].repeat(2, 0)), torch.zeros(2, dtype=torch.int64))
    with torch.no_grad():
        shape = [int(v) for v in model(*example).shape[1:]]  # [C, S, S]
    if shape != list(real.shape[1:]):
        raise MedgenError(
            f"generator makes {shape} images but the prepared images are {list(real.shape[1:])}: "
            "rerun generate on this data"
        )
    channels, size = shape[0], shape[-1]
    meta = {
        "class_names": onnx_export.class_names_of(config, n_classes),
        "n_classes": n_classes,
        "latent_dim": latent,
        "latent_distribution": "standard normal N(0, I), float32",
        "input_size": size,
        "channels": channels,
        "output_shape": shape,
        "normalisation": onnx_export.normalisation(channels),
        "inputs": [
            {"name": "z", "shape": ["batch", latent], "dtype": "float32"},
            {"name": "labels", "shape": ["batch"], "dtype": "int64"},
        ],
        "outputs": [{"name": "images", "shape": ["batch", channels, size, size], "dtype": "float32", "range": [-1, 1]}],
    }
    return meta, example, ("z", "labels"), ("images",), batches


def export_one(target: Target, cfg: Config, real: np.ndarray) -> tuple[dict[str, Any], Path, Path]:
    """Export, check and compare one model (a diffusion generator: medgen.diffusion_onnx); no ONNX if parity fails."""
    model, checkpoint = load_model(target.checkpoint)
    spec_of = _classifier_spec if target.kind == "classifier" else _generator_spec
    if denoiser := isinstance(model, diffusion_onnx.ClassConditionalUNet):  # a diffusion generator
        spec_of = diffusion_onnx.export_spec
    spec, example, inputs, outputs, batches = spec_of(model, checkpoint, real, cfg)
    model, outputs = onnx_export.with_guard(model, checkpoint, spec, outputs)  # + ood_score (medgen.guard)
    # No run id or registry version in the files: they are DVC outputs, the same for the same checkpoints.
    # MLflow links them instead (the export run logs them; the registered version records its run).
    meta = {
        **onnx_export.base_metadata(target.kind, target.checkpoint, checkpoint, cfg.export.opset),
        **spec,
        "name": target.stem,
        "file": f"{target.stem}.onnx",
        "registry_name": target.registry_name,
    }
    out, opset = Path(cfg.export.out_dir), cfg.export.opset
    export_onnx = diffusion_onnx.export_traced if denoiser else onnx_export.export_onnx  # the same, quieter
    onnx_path = export_onnx(model, example, out / f"{target.stem}.onnx", inputs, outputs, opset, meta)
    diffs = onnx_export.max_abs_diff(sess := onnx_export.session(onnx_path), model, batches)
    result = {"max_abs_diff": diffs["max"], "max_abs_diff_by_batch": {k: v for k, v in diffs.items() if k != "max"}}
    checks = [(f"{target.key}: onnxruntime", diffs["max"], f"batches {diffs}")]
    if denoiser:  # and the service's numpy DDIM step (serving/ddim.py) against diffusers', step by step
        result["sampler"], check = diffusion_onnx.sampler_check(sess, model, meta, cfg.seed, target.key)
        checks.append(check)
    onnx_export.check_parity(onnx_path, checks, cfg.export.parity_tolerance)
    meta.update(parity=result, sha256=onnx_export.file_sha256(onnx_path))
    json_path = write_json(out / f"{target.stem}.json", meta)
    return result, onnx_path, json_path


def outputs(cfg: Config) -> list[Output]:
    """What this stage writes (dvc.yaml's outs and metrics of `export`)."""
    return [output_folder(cfg.export.out_dir), output_file(cfg.export.metrics)]


def run(cfg: Config) -> dict[str, Any]:
    """The stage: every target exported to ONNX, checked for parity, registered (export.register), and listed
    in the manifest."""
    set_seed(cfg.seed)
    with tracking.stage_run(cfg, "export", params_sections=("export",)):
        chosen = targets(cfg)  # missing checkpoints fail before any work
        prepared = data.load_prepared(cfg.data)
        real = data.to_tensors(prepared.test)[0].numpy()
        metrics: dict[str, Any] = {}
        versions: dict[str, str] = {}  # target key -> registered version
        for target in chosen:
            result, onnx_path, json_path = export_one(target, cfg, real)
            if cfg.export.register:
                versions[target.key] = registry.register(
                    target.kind, target.registry_name, target.key, target.checkpoint, cfg, onnx_path, json_path
                )
            tracking.log_files([onnx_path, json_path], "onnx")
            metrics[target.key] = result
            log.info("exported %s: max |ort - torch| = %.2e", target.key, result["max_abs_diff"])
        write_json(cfg.export.metrics, metrics)
        # Model cards before the manifest (which hashes them); each registered version's run gets its own card
        model_card.log(model_card.write(cfg, cfg.export.out_dir, chosen, prepared), cfg.export.out_dir, versions)
        # Last: the manifest hashes every file now in the folder; the service serves nothing it does not list.
        tracking.log_files([manifest.write(cfg, cfg.export.out_dir)], "onnx")
        mlflow.log_metrics(tracking.numeric_metrics(metrics))
    return metrics
