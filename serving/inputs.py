"""Request bodies -> validated arrays and arguments. Every failure is a BadInput (HTTP 4xx with a reason)."""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from serving.bounded import BadInput
from serving.contract import Contract

GUIDANCE = (0.0, 10.0)  # classifier-free guidance scale accepted per request (0: unconditional, 1: conditional)
GENERATE_FIELDS = ("label", "n", "seed", "format", "steps", "guidance")


def array_batch(body: Any, contract: Contract, max_batch: int) -> np.ndarray:
    """Decoded JSON {"images": nested lists} -> uint8 (N, C, S, S) in any layout the contract accepts."""
    images = body.get("images") if isinstance(body, dict) else None
    if images is None:
        raise BadInput(
            f'JSON body must be an object with "images": an array of shape {contract.expected()}, pixel values 0..255',
            422,
        )
    try:
        array = np.asarray(images)
    except (ValueError, TypeError):
        raise BadInput("images must be numbers in nested lists of equal length (a ragged array)", 422) from None
    if array.dtype.kind not in "iuf":  # strings ("12"), booleans, objects: a wrong dtype, not coerced
        raise BadInput(f"images must hold numbers, got {array.dtype.name} values", 422)
    array = contract.to_nchw(array, max_batch)
    values = array.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise BadInput("images contain NaN or infinite values", 422)
    if values.min() < 0 or values.max() > 255 or not np.array_equal(values, np.round(values)):
        raise BadInput("pixel values must be integers in 0..255 (uint8, as the dataset stores them)", 422)
    return array.astype(np.uint8)


def npy_batch(payload: bytes, contract: Contract, max_batch: int) -> np.ndarray:
    """An .npy body (numpy.save of uint8 in any accepted layout) -> uint8 (N, C, S, S); never unpickles.

    The binary twin of the JSON batch: no text parsing, so large batches cost little to receive."""
    if not payload:
        raise BadInput("empty body", 400)
    try:
        array = np.load(io.BytesIO(payload), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"not a readable .npy array ({str(exc).splitlines()[0][:80]})", 400) from None
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise BadInput(f"npy dtype {getattr(array, 'dtype', '?')}; expected uint8 pixels", 422)
    return contract.to_nchw(array, max_batch, what="npy array")


def generate_args(body: Any, n_classes: int, max_batch: int) -> tuple[int, int, int | None, str]:
    """{"label": int, "n": 1..max_batch, "seed": int >= 0 (optional), "format": "png"|"array"} -> validated tuple."""
    if not isinstance(body, dict):
        raise BadInput('JSON body must be an object like {"label": 0, "n": 16, "seed": 1}', 422)
    unknown = set(body) - set(GENERATE_FIELDS)
    if unknown:
        raise BadInput(f"unknown field(s) {sorted(unknown)[:5]}; known: {', '.join(GENERATE_FIELDS)}", 422)

    def integer(key: str, default: Any = None) -> Any:
        value = body.get(key, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadInput(f"{key} must be an integer, got {json.dumps(value)[:40]}", 422)
        return value

    label, n, seed = integer("label"), integer("n", 16), integer("seed")
    if label is None or not 0 <= label < n_classes:
        raise BadInput(f"label must be an integer in 0..{n_classes - 1}, got {label}", 422)
    if not 1 <= n <= max_batch:
        raise BadInput(f"n must be in 1..{max_batch}, got {n}", 422)
    if seed is not None and not 0 <= seed < 2**63:
        raise BadInput(f"seed must be in 0..2**63-1, got {seed}", 422)
    fmt = body.get("format", "png")
    if fmt not in ("png", "array"):
        raise BadInput(f'format must be "png" or "array", got {json.dumps(fmt)[:40]}', 422)
    return label, n, seed, fmt


def sampler_args(body: dict[str, Any], family: str, max_steps: int) -> tuple[int | None, float | None]:
    """The optional "steps" (1..max_steps) and "guidance" (a number in GUIDANCE) of a /generate body already
    checked by generate_args; None where absent (the denoiser's defaults apply). A GAN takes neither: 422."""
    steps, guidance = body.get("steps"), body.get("guidance")
    if family != "diffusion" and (steps is not None or guidance is not None):
        raise BadInput(f"steps and guidance apply to a diffusion generator; this service serves a {family}", 422)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= max_steps):
        shown = json.dumps(steps)[:40]
        raise BadInput(f"steps must be an integer in 1..{max_steps} (MEDGEN_MAX_STEPS), got {shown}", 422)
    if guidance is not None:
        number = not isinstance(guidance, bool) and isinstance(guidance, (int, float)) and math.isfinite(guidance)
        if not number or not GUIDANCE[0] <= guidance <= GUIDANCE[1]:
            shown = json.dumps(guidance)[:40]
            raise BadInput(f"guidance must be a number in {GUIDANCE[0]:g}..{GUIDANCE[1]:g}, got {shown}", 422)
        guidance = float(guidance)
    return steps, guidance
