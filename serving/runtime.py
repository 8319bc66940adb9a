"""Inference over the exported ONNX models with onnxruntime, numpy and Pillow only.

No torch and no pickle: this module (and serving.service) must import and run without them. It holds
every piece of serving logic that is not HTTP (model loading, input validation, pre/post-processing),
so the service, the tests and the benchmark's in-process baseline run the same code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MODEL_DIR_ENV = "MEDGEN_MODEL_DIR"  # folder with classifier.onnx/.json, generator.onnx/.json
MODEL_SOURCE_ENV = "MEDGEN_MODEL_SOURCE"  # "dir" (default) or "mlflow" (models:/<name>@<alias>)
MODEL_ALIAS_ENV = "MEDGEN_MODEL_ALIAS"
DEFAULT_MODEL_DIR = "models/export"
MAX_UPLOAD_BYTES = int(os.environ.get("MEDGEN_MAX_UPLOAD_BYTES", 4 * 1024 * 1024))
MAX_IMAGE_PIXELS = 40_000_000  # decoded size cap: a small PNG can decode to gigabytes (decompression bomb)
MAX_BATCH = 256  # images per /classify JSON request, and n per /generate
REGISTRY = {"classifier": "medgen-classifier", "generator": "medgen-generator"}


class BadInput(ValueError):
    """A client error: becomes an HTTP 4xx with {"error": reason}."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


@dataclass
class Model:
    """One onnxruntime session plus the metadata the export stage wrote beside it."""

    name: str
    path: Path
    metadata: dict[str, Any]
    session: Any = field(repr=False)
    source: str = "dir"
    version: str = ""

    def info(self) -> dict[str, Any]:
        keys = ("kind", "class_names", "input_size", "latent_dim", "normalisation", "inputs", "outputs",
                "source_run_id", "export_run_id", "medgen_version", "registered", "parity", "opset")
        return {"name": self.name, "source": self.source, "version": self.version, "sha256": self.sha256,
                **{k: self.metadata[k] for k in keys if k in self.metadata}}

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # The machine is small and shared: one intra-op thread per session keeps latency predictable
    # and leaves the other core to the HTTP layer.
    options.intra_op_num_threads = int(os.environ.get("MEDGEN_ORT_THREADS", 1))
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def load_model_file(path: Path, name: str, source: str = "dir", version: str = "") -> Model:
    """ONNX file + its metadata: the JSON beside it, else the copy embedded in the ONNX metadata_props."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model not found (run `medgen stage export` first)")
    sess = _session(path)
    beside = path.with_suffix(".json")
    if beside.is_file():
        metadata = json.loads(beside.read_text())
    else:
        metadata = json.loads(sess.get_modelmeta().custom_metadata_map["medgen"])
    version = version or str((metadata.get("registered") or {}).get("version", ""))
    return Model(name, path, metadata, sess, source, version)


def _from_mlflow(name: str, alias: str) -> Model:
    """Download models:/<registry name>@<alias> (MLFLOW_TRACKING_URI) and load its ONNX file."""
    import mlflow  # only on this path: the default export-dir path needs no MLflow

    registry = REGISTRY[name]
    version = mlflow.MlflowClient().get_model_version_by_alias(registry, alias).version
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{registry}@{alias}"))
    (onnx_file,) = sorted(local.rglob("*.onnx"))[:1] or [local / "model.onnx"]
    model = load_model_file(onnx_file, name, source=f"mlflow:models:/{registry}@{alias}", version=str(version))
    extra = sorted(p for p in local.rglob(f"{name}.json"))
    if extra:  # the metadata JSON was logged as an extra file of the registered model
        model.metadata = json.loads(extra[0].read_text())
    return model


def load_models(model_dir: str | None = None, source: str | None = None) -> dict[str, Model]:
    """{'classifier': Model, 'generator': Model} from the export folder or the MLflow registry alias."""
    source = source or os.environ.get(MODEL_SOURCE_ENV, "dir")
    if source == "mlflow":
        alias = os.environ.get(MODEL_ALIAS_ENV, "champion")
        return {name: _from_mlflow(name, alias) for name in REGISTRY}
    folder = Path(model_dir or os.environ.get(MODEL_DIR_ENV, DEFAULT_MODEL_DIR))
    return {name: load_model_file(folder / f"{name}.onnx", name) for name in REGISTRY}


# ---------------------------------------------------------------------------------------------- inputs
def decode_image(payload: bytes, size: int) -> np.ndarray:
    """PNG/JPEG bytes of any size -> uint8 (size, size) grey, as MedMNIST made its images (bicubic)."""
    from PIL import Image, UnidentifiedImageError

    if not payload:
        raise BadInput("empty body: send a PNG/JPEG image or a JSON batch")
    if len(payload) > MAX_UPLOAD_BYTES:
        raise BadInput(f"upload is {len(payload)} bytes; the limit is {MAX_UPLOAD_BYTES}", status=413)
    try:
        with Image.open(io.BytesIO(payload)) as image:
            if image.format not in ("PNG", "JPEG"):
                raise BadInput(f"image format {image.format} not accepted: send PNG or JPEG", status=415)
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise BadInput(f"image is {image.width}x{image.height}; at most {MAX_IMAGE_PIXELS} pixels", status=413)
            grey = image.convert("L").resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, BadInput):
            raise
        raise BadInput(f"not a readable PNG/JPEG image ({type(exc).__name__})", status=415) from None


def parse_array_batch(body: Any, size: int) -> np.ndarray:
    """JSON {"images": [[28x28 pixel values 0..255], ...]} (or one 28x28 array) -> uint8 (N, size, size)."""
    images = body.get("images") if isinstance(body, dict) else None
    if images is None:
        raise BadInput('JSON body must be an object with "images": a list of HxW arrays of pixel values 0..255', 422)
    try:
        array = np.asarray(images)
    except (ValueError, TypeError):
        raise BadInput("images must be numbers in nested lists of equal length (a ragged array)", 422) from None
    if array.dtype.kind not in "iuf":  # strings ("12"), booleans, objects: a wrong dtype, not coerced
        raise BadInput(f"images must hold numbers, got {array.dtype.name} values", 422)
    array = array.astype(np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (size, size) or len(array) == 0:
        raise BadInput(f"images has shape {list(array.shape)}; expected [N, {size}, {size}] with 1 <= N <= {MAX_BATCH}", 422)
    if len(array) > MAX_BATCH:
        raise BadInput(f"{len(array)} images in one request; at most {MAX_BATCH}", 413)
    if not np.isfinite(array).all():
        raise BadInput("images contain NaN or infinite values", 422)
    if array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array)):
        raise BadInput("pixel values must be integers in 0..255 (grey uint8, as the dataset stores them)", 422)
    return array.astype(np.uint8)


def parse_npy(payload: bytes, size: int) -> np.ndarray:
    """An .npy body (numpy.save of uint8 (N, H, W) or (H, W)) -> uint8 (N, size, size); never unpickles.

    The binary twin of the JSON batch: no text parsing, so large batches cost little to receive."""
    if not payload:
        raise BadInput("empty body", 400)
    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"not a readable .npy array ({str(exc).splitlines()[0][:80]})", 400) from None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise BadInput(f"npy dtype {getattr(array, 'dtype', '?')}; expected uint8 grey pixels", 422)
    array = array[None] if array.ndim == 2 else array
    if array.ndim != 3 or array.shape[1:] != (size, size) or len(array) == 0:
        raise BadInput(f"npy shape {list(array.shape)}; expected [N, {size}, {size}] with 1 <= N <= {MAX_BATCH}", 422)
    if len(array) > MAX_BATCH:
        raise BadInput(f"{len(array)} images in one request; at most {MAX_BATCH}", 413)
    return np.ascontiguousarray(array)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [-1, 1]: exactly medgen.data.to_tensors."""
    return (images.astype(np.float32) / np.float32(127.5) - np.float32(1.0))[:, None]


def parse_generate(body: Any, n_classes: int) -> tuple[int, int, int | None, str]:
    """{"label": int, "n": 1..256, "seed": int >= 0 (optional), "format": "png"|"array"} -> validated tuple."""
    if not isinstance(body, dict):
        raise BadInput('JSON body must be an object like {"label": 0, "n": 16, "seed": 1}', 422)
    unknown = set(body) - {"label", "n", "seed", "format"}
    if unknown:
        raise BadInput(f"unknown field(s) {sorted(unknown)}; known: label, n, seed, format", 422)

    def integer(key: str, default: Any = None) -> Any:
        value = body.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadInput(f"{key} must be an integer, got {json.dumps(value)[:40]}", 422)
        return value

    label, n, seed = integer("label"), integer("n", 16), integer("seed")
    if label is None or not 0 <= label < n_classes:
        raise BadInput(f"label must be an integer in 0..{n_classes - 1}, got {label}", 422)
    if not 1 <= n <= MAX_BATCH:
        raise BadInput(f"n must be in 1..{MAX_BATCH}, got {n}", 422)
    if seed is not None and not 0 <= seed < 2**63:
        raise BadInput(f"seed must be in 0..2**63-1, got {seed}", 422)
    fmt = body.get("format", "png")
    if fmt not in ("png", "array"):
        raise BadInput(f'format must be "png" or "array", got {json.dumps(fmt)[:40]}', 422)
    return label, n, seed, fmt


# --------------------------------------------------------------------------------------------- compute
def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def classify_probs(model: Model, x: np.ndarray) -> np.ndarray:
    """float32 (N, 1, H, W) in [-1, 1] -> probabilities float64 (N, n_classes)."""
    (logits,) = model.session.run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})
    return softmax(logits)


def predictions(model: Model, probs: np.ndarray) -> list[dict[str, Any]]:
    names = model.metadata["class_names"]
    return [
        {"label": int(np.argmax(p)), "class_name": names[int(np.argmax(p))], "probabilities": [float(v) for v in p]}
        for p in probs
    ]


def generate(model: Model, label: int, n: int, seed: int) -> np.ndarray:
    """n images of class `label` as uint8 (n, H, W); the latents come from numpy's PCG64 seeded by `seed`,
    so the same seed gives the same images on any machine with the same model."""
    z = np.random.default_rng(seed).standard_normal((n, int(model.metadata["latent_dim"]))).astype(np.float32)
    (images,) = model.session.run(None, {"z": z, "labels": np.full(n, label, dtype=np.int64)})
    return np.round((np.clip(images[:, 0], -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def png_grid(images: np.ndarray, pad: int = 2) -> str:
    """uint8 (n, H, W) -> base64 PNG of a near-square grid with `pad` px black gutters."""
    from PIL import Image

    n, h, w = images.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = image
    buffer = io.BytesIO()
    Image.fromarray(grid, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
