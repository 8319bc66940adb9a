"""The input contract of a model: channels (1 or 3) and a square size (28..224), read from the model.

Source of truth, in order: `input_shape` ([C, S, S]) in the model's metadata JSON, else
[1, input_size, input_size]; the ONNX graph's own static dimensions must agree (else the model is
refused at start). Every input format is turned into uint8 (N, C, S, S) here:

- PNG/JPEG upload: converted to the model's channels (grey 'L' or 'RGB'; 16-bit grey scaled to 8 bits)
  and resized bicubic to S x S, as MedMNIST made its images;
- JSON / .npy arrays: (N, C, S, S), or channels-last (N, S, S, C) (MedMNIST's own npz layout), or
  (N, S, S) for a grey model; nothing is resized, a wrong shape is a 422 naming the expected one.
Channels-first and channels-last never collide: S >= 28 > C.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.bounded import BadInput

SIZES = (28, 224)  # smallest and largest square size accepted
CHANNELS = (1, 3)


class ModelError(ValueError):
    """An exported model breaks the serving contract: the service refuses to start (one line)."""


@dataclass(frozen=True)
class Contract:
    channels: int
    size: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], graph_shape: list[Any], name: str) -> Contract:
        """[C, S, S] from metadata `input_shape` (else [1, input_size, input_size]), checked against the
        graph's (batch, C, S, S) where the graph states them."""
        # a classifier states what it takes (input_shape), a generator what it makes (output_shape)
        shape = (
            metadata.get("input_shape")
            or metadata.get("output_shape")
            or [1, metadata.get("input_size"), metadata.get("input_size")]
        )
        ok = (
            isinstance(shape, list)
            and len(shape) == 3
            and all(isinstance(v, int) for v in shape)
            and shape[0] in CHANNELS
            and shape[1] == shape[2]
            and SIZES[0] <= shape[1] <= SIZES[1]
        )
        if not ok:
            raise ModelError(
                f"{name}: metadata input shape {shape} is not [C, S, S] with C in {CHANNELS} "
                f"and S in {SIZES[0]}..{SIZES[1]}"
            )
        stated = [d for d in graph_shape[1:]] if len(graph_shape) == 4 else None
        if stated is None or any(isinstance(g, int) and g != m for g, m in zip(stated, shape)):
            raise ModelError(
                f"{name}: the ONNX graph takes {graph_shape}, the metadata says [batch, {', '.join(map(str, shape))}]"
            )
        return cls(channels=shape[0], size=shape[1])

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def expected(self) -> str:
        c, s = self.channels, self.size
        grey = f"[N, {s}, {s}] or " if c == 1 else ""
        return f"{grey}[N, {c}, {s}, {s}] or [N, {s}, {s}, {c}] (channels last)"

    def describe(self, max_batch: int, max_pixels: int) -> dict[str, Any]:
        """What /metadata states about this contract."""
        return {
            "channels": self.channels,
            "size": self.size,
            "input_shape": [self.channels, self.size, self.size],
            "image": f"PNG or JPEG of any size up to {max_pixels} pixels: converted to {self.mode} and resized "
            f"(bicubic) to {self.size}x{self.size}",
            "array": f'JSON {{"images": ...}} or .npy uint8, shape {self.expected()}, values 0..255, '
            f"1 <= N <= {max_batch}",
        }

    def to_nchw(self, array: np.ndarray, max_batch: int, what: str = "images") -> np.ndarray:
        """An array in any accepted layout -> (N, C, S, S); 422 naming the expected shape otherwise."""
        c, s = self.channels, self.size
        if array.ndim == 2 and c == 1:
            array = array[None]
        if array.ndim == 3 and c == 1 and array.shape[1:] == (s, s):
            array = array[:, None]
        elif array.ndim == 4 and array.shape[1:] == (s, s, c):
            array = np.moveaxis(array, -1, 1)
        if array.ndim != 4 or array.shape[1:] != (c, s, s) or len(array) == 0:
            raise BadInput(
                f"{what} has shape {list(array.shape)}; expected {self.expected()} with 1 <= N <= {max_batch}", 422
            )
        if len(array) > max_batch:
            raise BadInput(f"{len(array)} images in one request; at most {max_batch} (MEDGEN_MAX_BATCH)", 413)
        return np.ascontiguousarray(array)

    def decode_image(self, payload: bytes, max_pixels: int) -> np.ndarray:
        """PNG/JPEG bytes -> uint8 (C, S, S); the pixel count is checked from the header, before decoding."""
        from PIL import Image, UnidentifiedImageError

        if not payload:
            raise BadInput("empty body: send a PNG/JPEG image or a JSON batch")
        try:
            with Image.open(io.BytesIO(payload)) as image:
                if image.format not in ("PNG", "JPEG"):
                    raise BadInput(f"image format {image.format} not accepted: send PNG or JPEG", status=415)
                if image.width * image.height > max_pixels:
                    raise BadInput(
                        f"image is {image.width}x{image.height}; at most {max_pixels} pixels (MEDGEN_MAX_IMAGE_PIXELS)",
                        status=413,
                    )
                if image.mode.startswith("I;16"):  # 16-bit grey: scale to 8 bits (convert('L') would clip)
                    image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8))
                resized = image.convert(self.mode).resize((self.size, self.size), Image.Resampling.BICUBIC)
                pixels = np.asarray(resized, dtype=np.uint8)
        except BadInput:
            raise
        except Image.DecompressionBombError:  # over Pillow's own cap (2 x 89 megapixels), raised by open()
            raise BadInput(f"image is over {max_pixels} pixels (MEDGEN_MAX_IMAGE_PIXELS)", status=413) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise BadInput(f"not a readable PNG/JPEG image ({type(exc).__name__})", status=415) from None
        return pixels[None] if self.channels == 1 else np.moveaxis(pixels, -1, 0)


def graph_shape(session: Any, output: bool = False) -> list[Any]:
    """The first input's (or output's) shape as onnxruntime states it, e.g. ['batch', 1, 28, 28]."""
    nodes = session.get_outputs() if output else session.get_inputs()
    return list(nodes[0].shape)
