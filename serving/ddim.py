"""DDIM sampling in numpy around an exported denoiser: what the service runs, with no torch and no diffusers.

It rebuilds the numbers of diffusers' DDIMScheduler as medgen.diffusion configures it (eta = 0, x_0
clipped to [-1, 1], "trailing" timesteps, alpha at t < 0 = 1) from the schedule the export writes into
the denoiser's metadata, and reproduces the library's arithmetic in float32, including one quirk: the
previous timestep is t - T // steps even where the trailing timesteps are not evenly spaced. Parity with
the torch sampler is checked step by step by tests/unit/test_diffusion_onnx.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

Denoiser = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (x_t, t, labels) -> prediction


def alphas_cumprod(
    train_timesteps: int, beta_schedule: str, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Cumulative products of (1 - beta_t), float32 (T,), for diffusers' three beta schedules."""
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, train_timesteps, dtype=np.float32)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, train_timesteps, dtype=np.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal (2021): alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2)
        bar = [math.cos((i / train_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(train_timesteps + 1)]
        betas = np.array([min(1 - bar[i + 1] / bar[i], 0.999) for i in range(train_timesteps)], dtype=np.float32)
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}")
    return np.cumprod((np.float32(1.0) - betas).astype(np.float32), dtype=np.float32)


def timesteps(train_timesteps: int, steps: int) -> np.ndarray:
    """Trailing spacing: round(arange(T, 0, -T/steps)) - 1, int64 (steps,), from T-1 down."""
    if not 1 <= steps <= train_timesteps:
        raise ValueError(f"steps must be in 1..{train_timesteps}, got {steps}")
    return (np.round(np.arange(train_timesteps, 0, -train_timesteps / steps)) - 1).astype(np.int64)


def ddim_step(pred: np.ndarray, t: int, x: np.ndarray, alphas: np.ndarray, stride: int, prediction: str) -> np.ndarray:
    """x_t -> x_{t - stride} with eta = 0, all in float32 (arrays (N, C, H, W))."""
    a_t = alphas[t]
    a_prev = alphas[t - stride] if t - stride >= 0 else np.float32(1.0)
    b_t = np.float32(1.0) - a_t
    if prediction == "epsilon":
        x0, eps = (x - b_t**0.5 * pred) / a_t**0.5, pred
    elif prediction == "v_prediction":
        x0, eps = a_t**0.5 * x - b_t**0.5 * pred, a_t**0.5 * pred + b_t**0.5 * x
    else:
        raise ValueError(f"unknown prediction type {prediction!r}")
    x0 = np.clip(x0, -1.0, 1.0)
    return (a_prev**0.5 * x0 + (np.float32(1.0) - a_prev) ** 0.5 * eps).astype(np.float32)


Step = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (x_t, t) -> (guided prediction, x_prev)


def make_step(run: Denoiser, labels: np.ndarray, schedule: dict[str, Any], steps: int, guidance: float) -> Step:
    """One guided DDIM step for labels int64 (N,): (x_t float32 (N, C, H, W), t) -> (prediction, x_prev).

    schedule: the denoiser metadata's keys train_timesteps, beta_schedule, prediction, null_label.
    Guidance g != 1 runs the conditional and the null-label rows in one batch of 2N."""
    T, prediction = int(schedule["train_timesteps"]), schedule["prediction"]
    alphas = alphas_cumprod(T, schedule["beta_schedule"])
    n, guided = len(labels), guidance != 1.0
    both = np.concatenate([labels, np.full(n, int(schedule["null_label"]))]) if guided else labels
    both = both.astype(np.int64)

    def step(x: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        batch = np.concatenate([x, x]) if guided else x
        out = run(batch, np.full(len(batch), t, dtype=np.int64), both)
        pred = out[n:] + np.float32(guidance) * (out[:n] - out[n:]) if guided else out
        return pred, ddim_step(pred, int(t), x, alphas, T // steps, prediction)

    return step


def sample(
    run: Denoiser,
    labels: np.ndarray,
    noise: np.ndarray,
    schedule: dict[str, Any],
    steps: int,
    guidance: float,
    trace: list | None = None,
) -> np.ndarray:
    """DDIM from noise float32 (N, C, H, W) for labels int64 (N,) -> float32 images in [-1, 1].

    When `trace` is a list, each step's (t, prediction, x_prev) is appended to it."""
    step = make_step(run, labels, schedule, steps, guidance)
    x = noise.astype(np.float32)
    for t in timesteps(int(schedule["train_timesteps"]), steps):
        pred, x = step(x, int(t))
        if trace is not None:
            trace.append((int(t), pred, x))
    return np.clip(x, -1.0, 1.0)


def onnx_denoiser(session: Any) -> Denoiser:
    """An onnxruntime session of the exported denoiser (inputs x_t, t, labels) as a `Denoiser`."""

    def run(x: np.ndarray, t: np.ndarray, labels: np.ndarray) -> np.ndarray:
        (out,) = session.run(None, {"x_t": np.ascontiguousarray(x, dtype=np.float32), "t": t, "labels": labels})
        return out

    return run


def generate(
    session: Any,
    metadata: dict[str, Any],
    label: int,
    n: int,
    seed: int,
    steps: int | None = None,
    guidance: float | None = None,
) -> np.ndarray:
    """n images of class `label` as uint8 (n, H, W) (or (n, H, W, 3)); the starting noise is numpy's PCG64
    seeded by `seed`, so the same seed gives the same images wherever the same model runs."""
    channels, size = int(metadata["channels"]), int(metadata["image_size"])
    noise = np.random.default_rng(seed).standard_normal((n, channels, size, size)).astype(np.float32)
    images = sample(
        onnx_denoiser(session),
        np.full(n, label, dtype=np.int64),
        noise,
        metadata,
        steps or int(metadata["default_steps"]),
        metadata["default_guidance"] if guidance is None else guidance,
    )
    pixels = np.round((images + 1.0) * 127.5).astype(np.uint8)
    return pixels[:, 0] if channels == 1 else pixels.transpose(0, 2, 3, 1)
