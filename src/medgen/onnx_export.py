"""PyTorch -> ONNX for medgen models: export, check, self-describing metadata, onnxruntime parity.

Known traps this module guards against (see DESIGN.md): export happens in eval() (BatchNorm/Dropout in
training mode export a different graph); the batch axis is declared dynamic explicitly; the graph goes
through onnx.checker; and onnxruntime is compared with PyTorch at several batch sizes, because
ConvTranspose and dynamic axes have produced silent mismatches at batch != the traced one.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen import __version__
from medgen.errors import MedgenError
from medgen.io import readable, remove_output, write_file

METADATA_KEY = "medgen"  # ONNX metadata_props key holding the metadata JSON (read by the service)


def normalisation(channels: int) -> dict[str, Any]:
    """How pixels become model inputs and outputs become pixels, for 1 (grey) or 3 (RGB) channels."""
    mode, name = ("L", "grey") if channels == 1 else ("RGB", "RGB")
    layout = "(N, 1, S, S)" if channels == 1 else "(N, 3, S, S), channels first (from (N, S, S, 3) uint8)"
    return {
        "range": [-1.0, 1.0],
        "from_uint8": f"x = pixel / 127.5 - 1  (pixel: {name} uint8 0..255, as medgen.data.to_tensors; "
        f"layout {layout})",
        "to_uint8": "pixel = round((clip(x, -1, 1) + 1) * 127.5)  (as medgen.data.to_uint8)",
        "resize": f"{name} (PIL '{mode}'), bicubic resize to input_size x input_size, as MedMNIST built its images",
    }


NORMALISATION = normalisation(1)  # grey: the BreastMNIST default


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (names an exported model in the manifest and the registry)."""
    return hashlib.sha256(readable(path).read_bytes()).hexdigest()


def class_names_of(config: dict[str, Any], n_classes: int) -> list[str]:
    """class_names from a checkpoint config (list, tuple or {"0": name} dict); indices when absent."""
    names = config.get("class_names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i, str(i))) for i in range(n_classes)]
    names = [str(n) for n in names] if names else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise MedgenError(f"checkpoint lists {len(names)} class names for n_classes={n_classes}")
    return names


def source_run_id(checkpoint: dict[str, Any]) -> str:
    """The MLflow run that trained the checkpoint, when its stage recorded one (extra key or config)."""
    config = checkpoint.get("config") or {}
    for value in (checkpoint.get("run_id"), checkpoint.get("mlflow_run_id"), config.get("run_id")):
        if isinstance(value, str) and value:
            return value
    return ""


def export_onnx(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    metadata: dict[str, Any],
) -> Path:
    """Trace `model` (in eval mode) to `path` with a dynamic batch axis on every input and output,
    embed `metadata` as ONNX metadata_props[medgen], and run onnx.checker on the result."""
    import onnx

    path = Path(path)
    model = model.eval()
    dynamic = {name: {0: "batch"} for name in (*input_names, *output_names)}
    with tempfile.TemporaryDirectory(prefix="medgen-onnx-") as scratch, torch.no_grad():
        tmp = Path(scratch) / path.name  # the trace never lands in an output folder
        torch.onnx.export(
            model,
            example,
            str(tmp),
            dynamo=False,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
        )
        proto = onnx.load(str(tmp))
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise MedgenError(f"{path.name}: exported graph fails onnx.checker ({str(exc).splitlines()[0]})") from None
    # small models: one self-contained file, no external data
    return write_file(path, lambda handle: handle.write(proto.SerializeToString()))


def with_guard(model: torch.nn.Module, checkpoint: dict[str, Any], meta: dict[str, Any], outputs: tuple[str, ...]):
    """The module to trace and its output names. A classify ensemble with an input guard (medgen.guard) is
    traced with two outputs, its calibrated log-probabilities ("logits") and "ood_score" (N,); its metadata
    (`meta`, updated here) then carries the calibrator and the guard's method and threshold."""
    from medgen.models.classifier import GuardedOutputs

    if not getattr(model, "guard", None):
        return model, outputs
    config = checkpoint.get("config") or {}
    meta["outputs"].append({"name": "ood_score", "shape": ["batch"], "dtype": "float32"})
    meta |= {"calibrator": config.get("calibrator"), "ood": config.get("ood")}
    return GuardedOutputs(model), (*outputs, "ood_score")


def session(path: str | Path):
    """An onnxruntime CPU session over the ONNX file at path."""
    import onnxruntime as ort

    return ort.InferenceSession(str(readable(path)), providers=["CPUExecutionProvider"])


def max_abs_diff(sess: Any, model: torch.nn.Module, batches: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """max |onnxruntime - torch| per batch size (key = batch size) and overall ('max'), over every output: the
    first absolute, any further one (an OOD score) relative to max(1, |torch|)."""
    model = model.eval()
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for feeds in batches:
            expected = model(*(torch.from_numpy(v) for v in feeds.values()))
            expected = [t.numpy() for t in expected] if isinstance(expected, tuple) else [expected.numpy()]
            got = sess.run(None, feeds)
            shapes = [g.shape for g in got], [e.shape for e in expected]
            if shapes[0] != shapes[1]:
                raise MedgenError(f"onnxruntime output shapes {shapes[0]} != torch {shapes[1]}")
            n = len(next(iter(feeds.values())))
            # the first output absolutely; later ones (the guard's unbounded distance) relative to max(1, |torch|)
            diffs[str(n)] = max(
                float(np.max(np.abs(g.astype(np.float64) - e) / (np.maximum(1.0, np.abs(e)) if i else 1.0)))
                for i, (g, e) in enumerate(zip(got, (e.astype(np.float64) for e in expected)))
            )
    diffs["max"] = max(diffs.values())
    return diffs


def check_parity(onnx_path: Path, checks: Sequence[tuple[str, float, Any]], tolerance: float) -> None:
    """checks: (what, max |onnxruntime - torch|, detail); the first above `tolerance` (or NaN) removes the ONNX
    file and raises MedgenError naming it."""
    for what, value, detail in checks:
        if not value <= tolerance:  # `not <=` also catches NaN
            remove_output(onnx_path)
            raise MedgenError(
                f"{what} differs from PyTorch by {value:.3g} > export.parity_tolerance={tolerance:g} ({detail})"
            )


def classifier_batches(images: np.ndarray, sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Consecutive real images (float32 (N,1,H,W) in [-1,1]) cut into batches of `sizes` (wrapping)."""
    total = sum(sizes)
    index = np.arange(total) % len(images)
    stacked = images[index].astype(np.float32)
    starts = np.cumsum([0, *sizes[:-1]])
    return [{"images": stacked[s : s + n]} for s, n in zip(starts, sizes)]


def generator_batches(latent_dim: int, n_classes: int, sizes: Sequence[int], seed: int) -> list[dict[str, np.ndarray]]:
    """Standard-normal latents and labels cycling over the classes, one dict of feeds per size."""
    rng = np.random.default_rng(seed)
    return [
        {
            "z": rng.standard_normal((n, latent_dim)).astype(np.float32),
            "labels": (np.arange(n) % n_classes).astype(np.int64),
        }
        for n in sizes
    ]


def base_metadata(kind: str, checkpoint_path: str | Path, checkpoint: dict[str, Any], opset: int) -> dict[str, Any]:
    """What any consumer needs to call the model right, without torch or the training code (and, for a generator,
    the variant its checkpoint records: cdcgan, acgan, wgan-gp, ddpm)."""
    variant = (checkpoint.get("config") or {}).get("variant")
    return {
        "kind": kind,
        "format": "onnx",
        "opset": opset,
        "normalisation": NORMALISATION,
        "source_checkpoint": str(checkpoint_path),
        "source_checkpoint_sha256": file_sha256(checkpoint_path),
        "source_run_id": source_run_id(checkpoint),
        "model_class": (checkpoint.get("model") or {}).get("class", ""),
        **({"variant": str(variant)} if variant else {}),
        "medgen_version": __version__,
    }
