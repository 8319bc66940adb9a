"""Bounded request parsing: every body is measured before it is decoded.

Python's json decoder recurses once per nesting level (a body of a few thousand `[` raises RecursionError)
and builds every value it meets, so a JSON body is scanned first: its depth and its number of values are
counted on the raw bytes (numpy, no recursion, linear time) and refused over the limits. Bodies are read
in chunks and refused as soon as they pass the byte limit, whatever their content-length says.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np


class BadInput(ValueError):
    """A client error: becomes an HTTP 4xx with {"error": reason}."""

    def __init__(self, reason: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.headers = reason, status, headers or {}


_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_COMMA = ord(",")
_STEP = np.zeros(256, dtype=np.int8)  # nesting step per byte value
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The whole body from `chunks`, refused with 413 as soon as it passes `limit` bytes (before reading it all)."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(f"body is {declared} bytes; the limit is {limit} (MEDGEN_MAX_BODY_BYTES)", 413)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BadInput(f"body is over the {limit}-byte limit (MEDGEN_MAX_BODY_BYTES)", 413)
        parts.append(chunk)
    return b"".join(parts)


def _outside_strings(raw: np.ndarray) -> np.ndarray:
    """Boolean mask of the bytes of a JSON text that lie outside its strings (vectorised, no Python loop).

    A quote is a string delimiter unless an odd run of backslashes precedes it; delimiters alternate
    open/close, so a byte is inside a string when an odd number of delimiters precede it (or it is one)."""
    n = len(raw)
    quotes = np.flatnonzero(raw == _QUOTE)
    if len(quotes) == 0:
        return np.ones(n, dtype=bool)
    positions = np.arange(n, dtype=np.int32)  # bodies are far below 2 GiB (MEDGEN_MAX_BODY_BYTES)
    last_plain = np.maximum.accumulate(np.where(raw != _BACKSLASH, positions, -1))  # last non-backslash at or before i
    before = quotes - 1
    run = np.where(before >= 0, before - last_plain[np.maximum(before, 0)], 0)  # backslashes just before the quote
    delimiters = quotes[run % 2 == 0]
    toggles = np.zeros(n, dtype=np.int32)
    toggles[delimiters] = 1
    parity = np.cumsum(toggles, dtype=np.int32) % 2  # 1 from an opening quote up to (not incl.) its closing one
    inside = parity.astype(bool)
    inside[delimiters] = True  # the quotes themselves are not structure either
    return ~inside


def json_shape(body: bytes) -> tuple[int, int]:
    """(deepest nesting, upper bound on the number of values) of a JSON text, without decoding it.

    Brackets and commas inside strings do not count; the bound is commas + containers + 1. Linear time
    in numpy (which releases the GIL), so a hostile 4 MB body costs milliseconds, not the event loop."""
    raw = np.frombuffer(body, dtype=np.uint8)
    structure = raw[_outside_strings(raw)] if b'"' in body else raw
    step = np.take(_STEP, structure)  # +1 at [ and {, -1 at ] and }, 0 elsewhere
    n_open = int(np.count_nonzero(step == 1))
    if n_open == 0:
        return 0, 1
    depth = int(np.cumsum(step, dtype=np.int32).max())
    return depth, int(np.count_nonzero(structure == _COMMA)) + n_open + 1


def parse_json(body: bytes, max_depth: int, max_elements: int) -> Any:
    """Decode a JSON body that passed the depth and size scan; every failure is a BadInput (400/413)."""
    if not body.strip():
        raise BadInput("empty body", 400)
    depth, elements = json_shape(body)
    if depth > max_depth:
        raise BadInput(f"JSON nested {depth} levels deep; the limit is {max_depth} (MEDGEN_MAX_JSON_DEPTH)", 400)
    if elements > max_elements:
        raise BadInput(
            f"JSON holds up to {elements} values; the limit is {max_elements} (MEDGEN_MAX_JSON_ELEMENTS)", 413
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError cannot happen below the depth cap
        raise BadInput("body is not valid JSON", 400) from None
