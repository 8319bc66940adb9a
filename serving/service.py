"""medgen inference service: BentoML 1.4 over onnxruntime (no torch, no pickle at serve time).

Start it (from the repository root, after `medgen stage export`):
    bentoml serve serving.service:MedGen --host 127.0.0.1 --port 3000
Models come from $MEDGEN_MODEL_DIR (default models/export) or, with MEDGEN_MODEL_SOURCE=mlflow, from the
registry alias models:/medgen-{classifier,generator}@champion ($MEDGEN_MODEL_ALIAS, $MLFLOW_TRACKING_URI).

Endpoints: POST /classify, POST /generate, GET /metadata, GET /healthz (BentoML's liveness probe, which
calls __is_alive__). Routes are a FastAPI app mounted on the service so that every body is parsed and
validated here: a bad request is a 4xx {"error": reason}, never a 500 from a parser. /classify batches
adaptively: the validated images of concurrent requests go into one onnxruntime call, by
serving.batching.GreedyBatcher (default) or, with MEDGEN_BATCHER=cork, by BentoML's CorkDispatcher
(the dispatcher behind `@bentoml.api(batchable=True)`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving import runtime
from serving.batching import GreedyBatcher
from serving.runtime import BadInput

log = logging.getLogger("medgen.serving")
app = FastAPI(title="medgen", description="BreastMNIST classifier and conditional generator (ONNX)")
JSON_TYPES = ("application/json",)
NPY_TYPE = "application/x-npy"  # numpy.save bytes of uint8 (N, 28, 28): the binary batch format
# Adaptive batching: at most this many images per onnxruntime call, waiting at most this long.
MAX_BATCH_IMAGES = int(os.environ.get("MEDGEN_MAX_BATCH_IMAGES", 256))
MAX_LATENCY_MS = int(os.environ.get("MEDGEN_MAX_LATENCY_MS", 10000))
BATCHER = os.environ.get("MEDGEN_BATCHER", "greedy")  # "greedy" (serving.batching) or "cork" (BentoML's)


def error(exc: BadInput) -> JSONResponse:
    return JSONResponse({"error": exc.reason, "status": exc.status}, status_code=exc.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(f"body is {declared} bytes; the limit is {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(f"body is over the {limit}-byte limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    if not body:
        raise BadInput("empty body", 400)
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("body is not valid JSON", 400) from None


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The first file of a multipart/form-data body (already read and size-checked)."""
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form()
    except Exception:  # python-multipart raises several types on a malformed body
        raise BadInput("malformed multipart/form-data body", 400) from None
    files = [v for v in form.values() if hasattr(v, "read")]
    if not files:
        raise BadInput("multipart body has no file field: send the image as a file (e.g. -F image=@x.png)", 400)
    return await files[0].read()


# One worker by default (the target machine has 2 cores: one for HTTP, one for onnxruntime).
@bentoml.service(
    name="medgen", workers=int(os.environ.get("MEDGEN_SERVE_WORKERS", 1)), traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # a log line per request costs time on a 2-core machine
)
@bentoml.asgi_app(app, path="/")
class MedGen:
    def __init__(self) -> None:
        self.models = runtime.load_models()
        self.classifier, self.generator = self.models["classifier"], self.models["generator"]
        self.size = int(self.classifier.metadata["input_size"])
        if BATCHER == "cork":  # BentoML's own adaptive batcher, kept for comparison (scripts/serve_bench.py)
            from bentoml._internal.marshal.dispatcher import CorkDispatcher

            dispatcher = CorkDispatcher(
                max_latency_in_ms=MAX_LATENCY_MS, max_batch_size=MAX_BATCH_IMAGES, fallback=self._overloaded,
                get_batch_size=lambda x: x.shape[0], batch_dim=(0, 0),
            )
            self.classify_batched = dispatcher(self._classify_batches)
        else:
            self.classify_batched = GreedyBatcher(self._classify_batches, MAX_BATCH_IMAGES)
        log.info("medgen models loaded: %s", {k: m.source for k, m in self.models.items()})

    def __is_alive__(self) -> bool:
        return self.classifier.session is not None and self.generator.session is not None

    @staticmethod
    def _overloaded() -> np.ndarray:
        raise BadInput("service overloaded: retry later", 503)

    def _classify_batches(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """One onnxruntime call for the images of several requests; split back per request."""
        probs = runtime.classify_probs(self.classifier, np.concatenate(batches))
        return np.split(probs, np.cumsum([len(b) for b in batches])[:-1])

    async def _images(self, request: Request) -> np.ndarray:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # A JSON batch of 256 28x28 arrays is ~1.2 MB as text; images are capped at MAX_UPLOAD_BYTES.
        body = await read_body(request, runtime.MAX_UPLOAD_BYTES)
        if media in JSON_TYPES:
            return runtime.parse_array_batch(parse_json(body), self.size)
        if media == NPY_TYPE:
            return runtime.parse_npy(body, self.size)
        if media == "multipart/form-data":
            body = await multipart_file(request, body)
        return runtime.decode_image(body, self.size)[None]

    @app.post("/classify")
    async def classify(self, request: Request) -> JSONResponse:
        """PNG/JPEG (raw body or multipart file), JSON {"images": [HxW 0..255]} or .npy uint8 (N, H, W)
        -> one prediction per image."""
        try:
            images = await self._images(request)
            probs = await self.classify_batched(runtime.to_model_input(images))
        except BadInput as exc:
            return error(exc)
        return JSONResponse({"predictions": runtime.predictions(self.classifier, probs),
                             "class_names": self.classifier.metadata["class_names"],
                             "model_version": self.classifier.version})

    @app.post("/generate")
    async def generate(self, request: Request) -> JSONResponse:
        """{"label", "n" (1..256), "seed" (optional), "format": "png"|"array"} -> a PNG grid or uint8 arrays."""
        try:
            body = parse_json(await read_body(request, 64 * 1024))
            label, n, seed, fmt = runtime.parse_generate(body, int(self.generator.metadata["n_classes"]))
        except BadInput as exc:
            return error(exc)
        seed = secrets.randbits(63) if seed is None else seed
        images = await run_in_threadpool(runtime.generate, self.generator, label, n, seed)
        out: dict[str, Any] = {"label": label, "class_name": self.generator.metadata["class_names"][label],
                               "n": n, "seed": seed, "format": fmt, "model_version": self.generator.version}
        if fmt == "png":
            out["png_base64"] = await run_in_threadpool(runtime.png_grid, images)
        else:
            out["images"] = images.tolist()
        return JSONResponse(out)

    @app.get("/metadata")
    def metadata(self) -> dict[str, Any]:
        return {
            "models": {name: model.info() for name, model in self.models.items()},
            "input_spec": {
                "classify": {"image": "PNG or JPEG, any size: converted to grey and resized (bicubic) to "
                                      f"{self.size}x{self.size}", "json": {"images": f"[N, {self.size}, {self.size}] "
                                      "integers 0..255", "max_n": runtime.MAX_BATCH},
                             "max_upload_bytes": runtime.MAX_UPLOAD_BYTES},
                "generate": {"label": f"0..{self.generator.metadata['n_classes'] - 1}", "n": f"1..{runtime.MAX_BATCH}",
                             "seed": "optional integer >= 0", "format": ["png", "array"]},
            },
        }
