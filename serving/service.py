"""medgen inference service: BentoML 1.4 over onnxruntime (no torch, no pickle at serve time).

Start it (from the repository root, after `medgen stage export`):
    bentoml serve serving.service:MedGen --host 127.0.0.1 --port 3000      (or `medgen serve`)
Models come from $MEDGEN_MODEL_DIR (default models/export; every file checked against its manifest.json
before the service listens) or, with MEDGEN_MODEL_SOURCE=mlflow, from the registry alias
models:/medgen-{classifier,generator}@champion ($MEDGEN_MODEL_ALIAS, $MLFLOW_TRACKING_URI).
Settings (limits, keys, rates) are environment variables: serving/settings.py lists them.

Endpoints: POST /classify, POST /generate, GET /metadata, GET /model-card (these four need a key when
keys are set), GET /healthz, /livez, /readyz (always open). Routes are a FastAPI app mounted on the
service so that every body is parsed and validated here: a bad request is a 4xx {"error": reason}, never
a 500 from a parser. Keys, rate limits and the in-flight bound are checked in front of that app, before routing
and the body (serving/admission.py). /classify batches adaptively: the validated images of concurrent requests go into
one onnxruntime call, by serving.batching.GreedyBatcher (default) or, with MEDGEN_BATCHER=cork, by
BentoML's CorkDispatcher (the dispatcher behind `@bentoml.api(batchable=True)`).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import bentoml
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from serving import inputs, runtime, startup
from serving.admission import SCOPE_KEY, Admission
from serving.batching import CallCost, GreedyBatcher, Overloaded
from serving.bounded import BadInput, parse_json, read_body
from serving.guard import busy, shared_guard
from serving.openapi import CLASSIFY_BODY, GENERATE_BODY, KEYED
from serving.settings import from_env

log = logging.getLogger("medgen.serving")
app = FastAPI(title="medgen", description="Medical-image classifier and conditional generator (ONNX)")
JSON_TYPES = ("application/json",)
NPY_TYPE = "application/x-npy"  # numpy.save bytes of uint8 (N, C, S, S) / (N, S, S[, C]): the binary batch format
GENERATE_BODY_BYTES = 64 * 1024
AUTO_WAIT = 1.5  # max_wait_ms 0: the budget in one-image calls (2.0 overshot 2 x unloaded p99: docs/serving.md)
COST_PROBE = 4  # images in the larger of the two timed calls at start


def error(exc: BadInput) -> JSONResponse:
    return JSONResponse({"error": exc.reason, "status": exc.status}, status_code=exc.status, headers=exc.headers)


@app.exception_handler(HTTPException)
async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and methods answer in the same {"error": ...} shape as every other refusal."""
    return error(BadInput(str(exc.detail), exc.status_code, getattr(exc, "headers", None)))


async def multipart_file(request: Request, body: bytes) -> bytes:
    """The first file of a multipart/form-data body (already read and size-checked)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=16)
    except Exception:  # python-multipart and starlette raise several types on a malformed body
        raise BadInput("malformed multipart/form-data body", 400) from None
    files = [v for v in form.values() if hasattr(v, "read")]
    if not files:
        raise BadInput("multipart body has no file field: send the image as a file (e.g. -F image=@x.png)", 400)
    return await files[0].read()


# One worker by default (the target machine has 2 cores: one for HTTP, one for onnxruntime).
@bentoml.service(
    name="medgen",
    workers=int(os.environ.get("MEDGEN_SERVE_WORKERS", 1)),
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # a log line per request costs time on a 2-core machine
)
@bentoml.asgi_app(app, path="/")
class MedGen:
    @bentoml.on_deployment
    def verify_before_serving() -> None:  # runs once, in BentoML's main process, before any worker starts
        startup.check_or_exit()

    def __init__(self) -> None:
        log.setLevel(logging.INFO)  # BentoML's handlers print it; refusals and first callers are rare lines
        # The deployment hook checked the same (and the bind rule) in the main process; a worker loads its own copy.
        self.settings, served = from_env(), runtime.load()
        self.served = served
        self.classifier, self.generator = served.models["classifier"], served.models["generator"]
        self.guard = shared_guard(self.settings)  # the same object serving.admission checks requests with
        batch = int(os.environ.get("MEDGEN_MAX_BATCH_IMAGES", 256))
        if os.environ.get("MEDGEN_BATCHER", "greedy") == "cork":  # BentoML's batcher, kept for comparison
            from bentoml._internal.marshal.dispatcher import CorkDispatcher

            dispatcher = CorkDispatcher(
                max_latency_in_ms=int(os.environ.get("MEDGEN_MAX_LATENCY_MS", 10000)),
                max_batch_size=batch,
                fallback=self._overloaded,
                get_batch_size=lambda x: x.shape[0],
                batch_dim=(0, 0),
            )
            self.classify_batched = dispatcher(self._classify_batches)
            self.budget_ms = math.inf  # BentoML's dispatcher has no cost model: the in-flight bound alone
        else:
            self.classify_batched = GreedyBatcher(self._classify_batches, batch, self._call_cost())
            self.budget_ms = float(self.settings.max_wait_ms) or AUTO_WAIT * self.classify_batched.cost(1)
            self.guard.set_load(self._expected_ms, self.budget_ms)
        log.info("%s; limits %s", startup.describe(served), self.limits())
        # Everything alive now (modules, sessions, metadata) lives as long as the worker: out of the collector's
        # reach, a full collection scans only what requests leave behind (measured: 31 ms -> 0 for the loaded heap,
        # a pause that held every request, refusals included).
        gc.collect()
        gc.freeze()

    def _call_cost(self) -> CallCost:
        """The classifier's cost per call, timed on blank images before the first request (~10 calls)."""
        contract = self.classifier.contract
        blank = np.zeros((COST_PROBE, contract.channels, contract.size, contract.size), np.uint8)
        return CallCost.measure(lambda n: self._classify_batches([blank[:n]]), big=COST_PROBE)

    def _expected_ms(self, inflight: int) -> float:
        """ms a new one-image /classify would wait now; admitted requests not in the batcher count one image each."""
        batcher = self.classify_batched
        return batcher.expected_ms(1, others=inflight - batcher.requests)

    def limits(self) -> dict[str, object]:
        """The settings /metadata shows, with the wait budget the service resolved (auto: 1.5 x one image)."""
        budget = None if math.isinf(self.budget_ms) else round(self.budget_ms, 1)
        return {**self.settings.public(), "wait_budget_ms": budget}

    def __is_alive__(self) -> bool:
        return self.classifier.session is not None and self.generator.session is not None

    @staticmethod
    def _overloaded() -> np.ndarray:
        raise BadInput("service overloaded: retry later", 503)

    def _classify_batches(self, batches: list[np.ndarray]) -> list[np.ndarray]:
        """One onnxruntime call for the images of several requests; split back per request."""
        probs = runtime.classify_outputs(self.classifier, runtime.to_model_input(np.concatenate(batches)))
        return np.split(probs, np.cumsum([len(b) for b in batches])[:-1])

    async def _guarded(
        self, request: Request, handler: Callable[[Request, str], Awaitable[Response]], compute: bool = True
    ) -> Response:
        """Key, rate and saturation checks before the body is read (done by serving.admission when it runs in front,
        else here); BadInput -> its 4xx."""
        caller = request.scope.get(SCOPE_KEY)
        if caller is None:
            client = request.client.host if request.client else "unknown"
            caller, refusal = self.guard.check(request.headers.get("authorization"), client, compute)
            if refusal is not None:
                return error(BadInput(refusal.reason, refusal.status, refusal.headers))
        try:
            return await handler(request, caller)
        except BadInput as exc:
            return error(exc)

    async def _images(self, request: Request, body: bytes) -> np.ndarray:
        """uint8 (N, C, S, S) from a PNG/JPEG (raw or multipart), a JSON batch or an .npy batch."""
        s, contract = self.settings, self.classifier.contract
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in JSON_TYPES:
            decoded = await run_in_threadpool(parse_json, body, s.max_json_depth, s.max_json_elements)
            return await run_in_threadpool(inputs.array_batch, decoded, contract, s.max_batch)
        if media == NPY_TYPE:
            return await run_in_threadpool(inputs.npy_batch, body, contract, s.max_batch)
        if media == "multipart/form-data":
            body = await multipart_file(request, body)
        return (await run_in_threadpool(contract.decode_image, body, s.max_image_pixels))[None]

    async def _classify(self, request: Request, caller: str) -> Response:
        body = await read_body(request.stream(), request.headers.get("content-length"), self.settings.max_body_bytes)
        with self.guard.slot(caller):  # the body has arrived: parsing and inference hold a slot
            images = await self._images(request, body)
            if isinstance(self.classify_batched, GreedyBatcher):
                try:  # the head check assumed one image: the batcher checks the budget with the real count
                    probs = await self.classify_batched(images, self.budget_ms)
                except Overloaded as exc:
                    raise self.guard.refused(caller, busy(exc.expected_ms, exc.budget_ms)) from None
            else:
                probs = await self.classify_batched(images)
        return JSONResponse(
            {
                "predictions": runtime.predictions(self.classifier, probs),
                "class_names": self.classifier.metadata["class_names"],
                "model_version": self.classifier.version,
            }
        )

    async def _generate(self, request: Request, caller: str) -> Response:
        s = self.settings
        body = parse_json(
            await read_body(request.stream(), request.headers.get("content-length"), GENERATE_BODY_BYTES),
            s.max_json_depth,
            s.max_json_elements,
        )
        generator = self.generator
        label, n, seed, fmt = inputs.generate_args(body, int(generator.metadata["n_classes"]), s.max_batch)
        steps, guidance = inputs.sampler_args(body, generator.family, s.max_steps)
        seed = secrets.randbits(63) if seed is None else seed
        if generator.denoiser:
            steps = steps or int(generator.metadata["default_steps"])
            guidance = float(generator.metadata["default_guidance"]) if guidance is None else guidance
        with self.guard.slot(caller):  # a denoiser's time grows with n x steps (x 2 when guidance != 1)
            images = await run_in_threadpool(runtime.generate, generator, label, n, seed, steps, guidance)
        contract = generator.contract
        out: dict[str, Any] = {
            "label": label,
            "class_name": generator.metadata["class_names"][label],
            "n": n,
            "seed": seed,
            "format": fmt,
            "channels": contract.channels,
            "size": contract.size,
            "model_version": generator.version,
            "family": generator.family,
            **({"steps": steps, "guidance": guidance} if generator.denoiser else {}),
        }
        if fmt == "png":
            out["png_base64"] = await run_in_threadpool(runtime.png_grid, images)
        else:
            out["images"] = runtime.channels_last(images).tolist()
        return JSONResponse(out)

    async def _metadata(self, _: Request, __: str) -> Response:
        s, classifier, card = self.settings, self.classifier, startup.card_view(self.served)
        generator = self.generator
        sampler = (
            {
                "steps": f"optional integer 1..{s.max_steps} (default {generator.metadata['default_steps']})",
                "guidance": f"optional number {inputs.GUIDANCE[0]:g}..{inputs.GUIDANCE[1]:g} "
                f"(default {generator.metadata['default_guidance']:g})",
            }
            if generator.denoiser
            else {}
        )
        return JSONResponse(
            {
                "models": {name: model.info() for name, model in self.served.models.items()},
                "manifest": startup.manifest_view(self.served),
                **({"model_card": card} if card else {}),
                "input_spec": {
                    "classify": classifier.contract.describe(s.max_batch, s.max_image_pixels),
                    "generate": {
                        "generator": {
                            "family": generator.family,
                            "variant": generator.metadata.get("variant", ""),
                            "version": generator.version,
                            "source": generator.source,
                        },
                        "label": f"0..{generator.metadata['n_classes'] - 1}",
                        "n": f"1..{s.max_batch}",
                        "seed": "optional integer >= 0",
                        "format": ["png", "array"],
                        **sampler,
                        "returns": [generator.contract.channels, *[generator.contract.size] * 2],
                    },
                },
                "limits": self.limits(),
            }
        )

    async def _model_card(self, request: Request, _: str) -> Response:
        card = self.served.card
        wants_md = "text/markdown" in request.headers.get("accept", "")
        if wants_md and "md" in card:
            return Response(card["md"], media_type="text/markdown; charset=utf-8")
        if "json" in card:
            return Response(card["json"], media_type="application/json")
        what = "model_card.md" if wants_md else "model_card.json"
        raise BadInput(f"no model card: the export folder has no {what}", 404)

    @app.post("/classify", openapi_extra={**CLASSIFY_BODY, **KEYED})
    async def classify(self, request: Request) -> Response:
        """PNG/JPEG (raw body or multipart file), JSON {"images": ...} or .npy uint8 -> one prediction per image."""
        return await self._guarded(request, self._classify)

    @app.post("/generate", openapi_extra={**GENERATE_BODY, **KEYED})
    async def generate(self, request: Request) -> Response:
        """{"label", "n", "seed" (optional), "format": "png"|"array", "steps"/"guidance" (a diffusion generator,
        optional)} -> a PNG grid or uint8 arrays, the same for either generator family."""
        return await self._guarded(request, self._generate)

    @app.get("/metadata", openapi_extra=KEYED)
    async def metadata(self, request: Request) -> Response:
        """Models, their input contract, the manifest's hashes and commit, the limits."""
        return await self._guarded(request, self._metadata, compute=False)

    @app.get("/model-card", openapi_extra=KEYED)
    async def model_card(self, request: Request) -> Response:
        """models/export/model_card.json (or .md with Accept: text/markdown); 404 when not exported."""
        return await self._guarded(request, self._model_card, compute=False)


# Refusals (401/429/503) are answered before routing, the FastAPI app and the body: see serving/admission.py.
MedGen.add_asgi_middleware(Admission)
