"""The denoiser to ONNX, and the parity of the service's numpy DDIM loop with the torch sampler.

The graph is the network only (x_t, t, labels) -> prediction, opset 17, batch axis dynamic; the sampling
loop stays outside it (serving/ddim.py) so the service picks steps and guidance per request. The schedule
and sampler defaults travel in the metadata, the single source the numpy loop reads.

The export stage checks the service's own numpy loop, not a copy of it: `service_sampler` loads
serving/ddim.py (numpy only) lazily, for that check alone. Nothing else in medgen imports serving/.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from medgen import onnx_export
from medgen.config import Config
from medgen.diffusion import DEFAULT_GUIDANCE, DEFAULT_STEPS, TIMESTEP_SPACING, ddim_sample
from medgen.errors import MedgenError
from medgen.models.diffusion import ClassConditionalUNet

INPUTS, OUTPUTS = ("x_t", "t", "labels"), ("prediction",)


def denoiser_metadata(
    model: ClassConditionalUNet, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE
) -> dict[str, Any]:
    """What serving/ddim.py needs besides the graph: sizes, schedule, prediction type, sampler defaults."""
    return {
        "kind": "denoiser",
        "n_classes": model.n_classes,
        "null_label": model.null_label,
        "channels": model.channels,
        "image_size": model.image_size,
        "output_shape": [model.channels, model.image_size, model.image_size],  # what serving.contract reads
        "prediction": model.prediction,
        "train_timesteps": model.train_timesteps,
        "beta_schedule": model.beta_schedule,
        "timestep_spacing": TIMESTEP_SPACING,
        "clip_sample": True,
        "eta": 0.0,
        "default_steps": steps,
        "default_guidance": guidance,
        "inputs": {"x_t": "float32 (N, C, H, W)", "t": "int64 (N,)", "labels": "int64 (N,), n_classes = null"},
        "outputs": {"prediction": f"float32 (N, C, H, W): {model.prediction}"},
    }


def example_inputs(
    model: ClassConditionalUNet, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t ~ N(0, I), timesteps spread over the schedule and labels cycling over classes + null, batch n."""
    rng = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.channels, model.image_size, model.image_size, generator=rng)
    t = torch.randint(0, model.train_timesteps, (n,), generator=rng)
    return x, t, torch.arange(n) % (model.n_classes + 1)


def export_denoiser(
    model: ClassConditionalUNet, path: str | Path, opset: int = 17, metadata: dict[str, Any] | None = None
) -> Path:
    """Trace the denoiser (eval mode) to ONNX with a dynamic batch axis; onnx.checker runs on the result."""
    meta = denoiser_metadata(model) | (metadata or {})
    return export_traced(model.eval(), example_inputs(model, 2), path, INPUTS, OUTPUTS, opset, meta)


def export_traced(
    model: ClassConditionalUNet,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int,
    metadata: dict[str, Any],
) -> Path:
    """onnx_export.export_onnx (same arguments) for a denoiser, without diffusers' harmless tracer warning."""
    import warnings

    with warnings.catch_warnings():
        # diffusers' Upsample2D branches on the batch size / element count only to call .contiguous() (a
        # layout, not a value, change): the tracer's "treated as a constant" warning is harmless there
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return onnx_export.export_onnx(model, example, path, input_names, output_names, opset, metadata)


def network_parity(session: Any, model: ClassConditionalUNet, sizes: tuple[int, ...] = (1, 7, 32)) -> dict[str, float]:
    """max |onnxruntime - torch| of one network call per batch size (key = size) and overall ('max')."""
    batches = [dict(zip(INPUTS, (v.numpy() for v in example_inputs(model, n, seed=n)))) for n in sizes]
    return onnx_export.max_abs_diff(session, model, batches)


def sampler_parity(
    numpy_step, model: ClassConditionalUNet, labels: np.ndarray, noise: np.ndarray, steps: int, guidance: float
) -> dict[str, float]:
    """A numpy DDIM step (serving/ddim.py `make_step`, over onnxruntime) against medgen.diffusion.ddim_sample.

    The caller builds `numpy_step` (`sampler_check` does, with `service_sampler`). Per step, the numpy step gets the
    torch sampler's own x_t: `step_max` / `prediction_max` = the largest |numpy - torch| of x_prev / of the
    guided network output over all steps (the error one step adds). `trajectory_max`: the largest
    |numpy - torch| of x when the numpy loop runs on its own from the same noise (errors accumulate)."""
    torch_trace: list = []
    ddim_sample(model, torch.from_numpy(labels), torch.from_numpy(noise), steps, guidance, trace=torch_trace)
    inputs = [noise] + [x for _, _, x in torch_trace[:-1]]
    step_max = prediction_max = trajectory_max = 0.0
    x = noise
    for (t, pred, x_prev), x_t in zip(torch_trace, inputs):
        np_pred, np_prev = numpy_step(x_t, t)
        step_max = max(step_max, float(np.abs(np_prev - x_prev).max()))
        prediction_max = max(prediction_max, float(np.abs(np_pred - pred).max()))
        x = numpy_step(x, t)[1]
        trajectory_max = max(trajectory_max, float(np.abs(x - x_prev).max()))
    return {"step_max": step_max, "prediction_max": prediction_max, "trajectory_max": trajectory_max, "steps": steps}


SERVICE_SAMPLER = Path(__file__).resolve().parents[2] / "serving" / "ddim.py"  # beside src/ in the repository


def service_sampler() -> ModuleType:
    """serving/ddim.py, the service's numpy DDIM loop: `serving.ddim` when the repository root is importable
    (tests, `python -m`), else the file beside src/ (the `medgen` CLI of an editable install, the pipeline
    image). MedgenError when neither exists: the export must check the very code the service runs."""
    try:
        from serving import ddim

        return ddim
    except ImportError:
        pass
    if not SERVICE_SAMPLER.is_file():
        raise MedgenError(
            f"{SERVICE_SAMPLER}: not found; exporting a denoiser checks the service's sampler, so run the export "
            "from a repository checkout with medgen installed editable (pip install -e .)"
        )
    name = "medgen_service_ddim"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SERVICE_SAMPLER)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def sampler_check(
    session: Any, model: ClassConditionalUNet, metadata: dict[str, Any], seed: int, key: str, n: int | None = None
) -> tuple[dict[str, Any], tuple[str, float, dict[str, Any]]]:
    """`sampler_parity` of the service's numpy DDIM step over `session` at the metadata's default steps and
    guidance, for n samples (default: every class at least once, at least 2) from seeded standard-normal noise;
    and the export stage's parity check of it (onnx_export.check_parity): the worse of the step and prediction
    differences."""
    ddim = service_sampler()
    n = n or max(2, model.n_classes)
    steps, guidance = int(metadata["default_steps"]), float(metadata["default_guidance"])
    labels = (np.arange(n) % model.n_classes).astype(np.int64)
    shape = (n, model.channels, model.image_size, model.image_size)
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    step = ddim.make_step(ddim.onnx_denoiser(session), labels, metadata, steps, guidance)
    figures = sampler_parity(step, model, labels, noise, steps, guidance) | {"guidance": guidance, "n": n}
    worst = max(figures["step_max"], figures["prediction_max"])
    return figures, (f"{key}: one DDIM step of serving/ddim.py over onnxruntime", worst, figures)


def export_spec(model: ClassConditionalUNet, checkpoint: dict[str, Any], real: np.ndarray, cfg: Config) -> tuple:
    """What the export stage needs of a diffusion generator's denoiser (as its _generator_spec of a GAN): metadata
    (serving/ddim.py's schedule, the generate stage's sampler_steps/guidance as the sampler defaults, and a GAN's
    class names, shape and normalisation), example inputs, input/output names and network parity batches."""
    config = checkpoint.get("config") or {}
    channels, size = model.channels, model.image_size
    shape = [channels, size, size]
    if shape != list(real.shape[1:]):
        raise MedgenError(
            f"denoiser makes {shape} images but the prepared images are {list(real.shape[1:])}: "
            "rerun generate on this data"
        )
    steps = int(config.get("sampler_steps", DEFAULT_STEPS))
    guidance = float(config.get("guidance", DEFAULT_GUIDANCE))
    n_classes = model.n_classes
    meta = denoiser_metadata(model, steps, guidance) | {
        "family": "diffusion",
        "variant": str(config.get("variant", "ddpm")),
        "class_names": onnx_export.class_names_of(config, n_classes),
        "input_size": size,
        "output_shape": shape,
        "normalisation": onnx_export.normalisation(channels),
        "inputs": [
            {"name": "x_t", "shape": ["batch", channels, size, size], "dtype": "float32"},
            {"name": "t", "shape": ["batch"], "dtype": "int64", "range": [0, model.train_timesteps - 1]},
            {"name": "labels", "shape": ["batch"], "dtype": "int64", "range": [0, n_classes], "null": n_classes},
        ],
        "outputs": [
            {"name": "prediction", "shape": ["batch", channels, size, size], "dtype": "float32", "of": model.prediction}
        ],
    }
    batches = [
        dict(zip(INPUTS, (v.numpy() for v in example_inputs(model, n, seed=cfg.seed + n))))
        for n in cfg.export.parity_batches
    ]
    return meta, example_inputs(model, 2), INPUTS, OUTPUTS, batches
