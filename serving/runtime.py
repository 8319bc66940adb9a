"""Inference over the exported ONNX models with onnxruntime, numpy and Pillow only.

No torch and no pickle: this module (and serving.service) must import and run without them. It loads the
models (every file checked against the export manifest, serving.integrity), states each model's contract
(serving.contract) and computes; the service, the tests and the benchmark's in-process baseline run
this same code.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving import ddim, integrity
from serving.contract import Contract, ModelError, graph_shape

MODEL_DIR_ENV = "MEDGEN_MODEL_DIR"  # folder with manifest.json, classifier.onnx/.json, generator.onnx/.json
MODEL_SOURCE_ENV = "MEDGEN_MODEL_SOURCE"  # "dir" (default) or "mlflow" (models:/<name>@<alias>)
MODEL_ALIAS_ENV = "MEDGEN_MODEL_ALIAS"
DEFAULT_MODEL_DIR = "models/export"
REGISTRY = {"classifier": "medgen-classifier", "generator": "medgen-generator"}
CARD_FILES = {"json": "model_card.json", "md": "model_card.md"}


@dataclass
class Model:
    """One onnxruntime session, the metadata the export stage wrote beside it, and its image contract."""

    name: str
    path: str
    metadata: dict[str, Any]
    session: Any = field(repr=False)
    contract: Contract
    sha256: str
    source: str = "dir"
    version: str = ""

    def info(self) -> dict[str, Any]:
        keys = (
            "kind",
            "class_names",
            "input_size",
            "input_shape",
            "latent_dim",
            "normalisation",
            "inputs",
            "outputs",
            "source_run_id",
            "export_run_id",
            "medgen_version",
            "registered",
            "parity",
            "opset",
            "recipe",
            "members",
            "views",
            "calibrator",
            "ood",
            "variant",
            "default_steps",
            "default_guidance",
        )
        family = {"family": self.family} if self.name == "generator" else {}
        return {
            "name": self.name,
            "source": self.source,
            "version": self.version,
            "sha256": self.sha256,
            "channels": self.contract.channels,
            "size": self.contract.size,
            **family,
            **{k: self.metadata[k] for k in keys if k in self.metadata},
        }

    @property
    def denoiser(self) -> bool:
        """A diffusion model's denoiser (sampled by serving.ddim), not a one-pass generator."""
        return self.metadata.get("kind") == "denoiser"

    @property
    def family(self) -> str:
        """The generator family: "diffusion" for a denoiser, else "gan" (as any export from before the family)."""
        return "diffusion" if self.denoiser else str(self.metadata.get("family") or "gan")


@dataclass
class Served:
    """Everything the service serves, loaded and checked once at start."""

    models: dict[str, Model]
    manifest: dict[str, Any] | None  # None when the models come from the MLflow registry
    card: dict[str, bytes] = field(default_factory=dict)  # {"json": ..., "md": ...} when exported


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The machine is small and shared: one intra-op thread per session keeps latency predictable
    # and leaves the other core to the HTTP layer.
    options.intra_op_num_threads = int(os.environ.get("MEDGEN_ORT_THREADS", 1))
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def build_model(
    name: str, onnx: bytes, metadata_json: bytes | None, where: str, source: str = "dir", version: str = ""
) -> Model:
    """A Model from ONNX bytes and its metadata JSON (else the copy embedded in the ONNX metadata_props)."""
    try:
        session = _session(onnx)
    except Exception as exc:  # onnxruntime raises its own types for a file that is not a model
        raise ModelError(f"{where}: onnxruntime cannot load it ({str(exc).splitlines()[0][:120]})") from None
    try:
        text = metadata_json if metadata_json is not None else session.get_modelmeta().custom_metadata_map["medgen"]
        metadata = json.loads(text)
    except (KeyError, ValueError):
        raise ModelError(f"{where}: no readable medgen metadata (JSON beside it or embedded)") from None
    output = name == "generator"
    contract = Contract.from_metadata(metadata, graph_shape(session, output=output), where)
    if metadata.get("kind") == "denoiser":
        check_denoiser(metadata, contract, where)
    version = version or str((metadata.get("registered") or {}).get("version", ""))
    return Model(name, where, metadata, session, contract, integrity.sha256(onnx), source, version)


# what serving.ddim reads from a denoiser's metadata
DENOISER_KEYS = (
    "n_classes", "null_label", "prediction", "train_timesteps", "beta_schedule", "default_steps", "default_guidance",
    "channels", "image_size",
)  # fmt: skip


def check_denoiser(metadata: dict[str, Any], contract: Contract, where: str) -> None:
    """A denoiser's metadata describes a sampler serving.ddim can run at the contract's shape, else ModelError."""
    missing = [k for k in DENOISER_KEYS if k not in metadata]
    if missing:
        raise ModelError(f"{where}: denoiser metadata lacks {missing}")
    shape = [metadata["channels"], metadata["image_size"]]
    if shape != [contract.channels, contract.size]:
        raise ModelError(f"{where}: denoiser channels/image_size {shape} differ from its output shape")
    try:
        ints = [int(metadata[k]) for k in ("n_classes", "null_label", "train_timesteps", "default_steps")]
        ddim.alphas_cumprod(ints[2], metadata["beta_schedule"])
        ddim.timesteps(ints[2], ints[3])
        float(metadata["default_guidance"])
        if metadata["prediction"] not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {metadata['prediction']!r}")
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: denoiser metadata is not a sampler serving.ddim runs ({exc})") from None


def _from_dir(folder: Path) -> Served:
    manifest = integrity.read_manifest(folder)
    integrity.verify_all(folder, manifest)
    models = {}
    for name in REGISTRY:
        beside = f"{name}.json"
        meta = integrity.verified_bytes(folder, beside, manifest) if (folder / beside).exists() else None
        onnx = integrity.verified_bytes(folder, f"{name}.onnx", manifest)
        models[name] = build_model(name, onnx, meta, str(folder / f"{name}.onnx"))
    card = {
        kind: integrity.verified_bytes(folder, file, manifest)
        for kind, file in CARD_FILES.items()
        if (folder / file).exists()
    }
    return Served(models, manifest, card)


def _from_mlflow(name: str, alias: str) -> Model:
    """Download models:/<registry name>@<alias> (MLFLOW_TRACKING_URI); the ONNX file must match the sha256
    its metadata JSON records."""
    registry = REGISTRY[name]
    try:
        import mlflow  # only on this path: the export-dir path (and the serve image) need no MLflow

        version = mlflow.MlflowClient().get_model_version_by_alias(registry, alias).version
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registry}@{alias}"))
    except ImportError:
        raise ModelError(
            f"{MODEL_SOURCE_ENV}=mlflow needs the mlflow package (the serve image has none: "
            "mount an export folder instead)"
        ) from None
    except Exception as exc:  # MLflow raises its own types for a missing model, alias or server
        raise ModelError(
            f"models:/{registry}@{alias}: not loadable from the MLflow registry "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
        ) from None
    (onnx_file,) = sorted(local.rglob("*.onnx"))[:1] or [local / "model.onnx"]
    meta_files = sorted(local.rglob(f"{name}.json"))
    meta = meta_files[0].read_bytes() if meta_files else None
    onnx = onnx_file.read_bytes()
    uri = f"models:/{registry}@{alias}"
    model = build_model(name, onnx, meta, uri, f"mlflow:{uri}", str(version))
    recorded = model.metadata.get("sha256")
    if recorded and recorded != model.sha256:
        raise integrity.IntegrityError(f"models:/{registry}@{alias}: ONNX sha256 differs from its metadata JSON")
    return model


def load(model_dir: str | None = None, source: str | None = None) -> Served:
    """The classifier, the generator and the model card, from the export folder (manifest-checked) or
    the MLflow registry alias. ModelError (one line) on anything missing, altered or malformed."""
    source = source or os.environ.get(MODEL_SOURCE_ENV, "dir")
    if source == "mlflow":
        alias = os.environ.get(MODEL_ALIAS_ENV, "champion")
        return Served({name: _from_mlflow(name, alias) for name in REGISTRY}, None)
    if source != "dir":
        raise ModelError(f"{MODEL_SOURCE_ENV}={source!r}: expected dir or mlflow")
    return _from_dir(model_folder(model_dir or os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR)))


def model_folder(given: str) -> Path:
    """The export folder: a relative path is taken from the working directory, else from the source root
    that holds serving/ (a bento runs from its own folder while its files sit in src/)."""
    folder = Path(given)
    if not folder.is_absolute() and not folder.exists():
        beside = Path(__file__).resolve().parents[1] / folder
        if beside.exists():
            return beside
    return folder


def load_models(model_dir: str | None = None, source: str | None = None) -> dict[str, Model]:
    """{'classifier': Model, 'generator': Model}: load(...).models."""
    return load(model_dir, source).models


# --------------------------------------------------------------------------------------------- compute
def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 (N, C, H, W) in [-1, 1]: exactly medgen.data.to_tensors."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def classify_outputs(model: Model, x: np.ndarray) -> np.ndarray:
    """float32 (N, C, H, W) in [-1, 1] -> float64 (N, n_classes) probabilities, followed by one more column, the
    input guard's out-of-distribution score, when the graph has that output (medgen.guard)."""
    outputs = model.session.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})
    probs = softmax(outputs[0])
    return np.column_stack([probs, outputs[1].astype(np.float64)]) if len(outputs) > 1 else probs


def classify_probs(model: Model, x: np.ndarray) -> np.ndarray:
    """float32 (N, C, H, W) in [-1, 1] -> probabilities float64 (N, n_classes)."""
    return classify_outputs(model, x)[:, : len(model.metadata["class_names"])]


def predictions(model: Model, outputs: np.ndarray) -> list[dict[str, Any]]:
    """One entry per row of classify_outputs: label, class name, probabilities; with a guard also `ood_score`
    and `in_distribution` (score <= the threshold fixed on held-out training images at export)."""
    names = model.metadata["class_names"]
    threshold = (model.metadata.get("ood") or {}).get("threshold")
    entries = []
    for row in outputs:
        p = row[: len(names)]
        best = int(np.argmax(p))
        entry = {"label": best, "class_name": names[best], "probabilities": [float(v) for v in p]}
        if len(row) > len(names) and threshold is not None:
            entry |= {"ood_score": float(row[len(names)]), "in_distribution": bool(row[len(names)] <= threshold)}
        entries.append(entry)
    return entries


def generate(
    model: Model, label: int, n: int, seed: int, steps: int | None = None, guidance: float | None = None
) -> np.ndarray:
    """n images of class `label` as uint8 (n, C, S, S), for either family. A GAN's latents, or a denoiser's
    starting noise, come from numpy's PCG64 seeded by `seed`, so the same seed gives the same images on any
    machine with the same model. A denoiser runs serving.ddim's DDIM loop, `steps` and `guidance` defaulting to
    its metadata's default_steps / default_guidance (a GAN takes neither)."""
    if model.denoiser:
        pixels = ddim.generate(model.session, model.metadata, label, n, seed, steps, guidance)
        return pixels[:, None] if pixels.ndim == 3 else np.ascontiguousarray(np.moveaxis(pixels, -1, 1))
    if steps is not None or guidance is not None:
        raise ValueError(f"{model.family} generator: steps and guidance apply to a diffusion model only")
    z = np.random.default_rng(seed).standard_normal((n, int(model.metadata["latent_dim"]))).astype(np.float32)
    (images,) = model.session.run(None, {"z": z, "labels": np.full(n, label, dtype=np.int64)})
    return np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def channels_last(images: np.ndarray) -> np.ndarray:
    """uint8 (n, C, S, S) -> (n, S, S) for grey, (n, S, S, 3) for colour: the layout of MedMNIST's npz and
    of image libraries (and an accepted /classify input)."""
    return images[:, 0] if images.shape[1] == 1 else np.moveaxis(images, 1, -1)


def png_grid(images: np.ndarray, pad: int = 2) -> str:
    """uint8 (n, C, S, S) -> base64 PNG (grey or RGB) of a near-square grid with `pad` px black gutters."""
    from PIL import Image

    tiles = channels_last(images)
    n, h, w = tiles.shape[:3]
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, *tiles.shape[3:]), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = tile
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
