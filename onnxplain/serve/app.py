"""The ASGI app: the native routes (/health, /model, /predict, /explain, /openapi.json), refusals as
{"error": sentence} answers, and `create_app`, which serves every protocol in PROTOCOLS.

Starlette is imported only when an app is built, so `onnxplain --help` stays fast.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import asdict
from typing import TYPE_CHECKING, Callable

from ..errors import UserError
from .batcher import Batcher, Service
from .config import ServeConfig
from .openapi import document
from ..limits import Cancelled, LimitError
from .guard import RETRY_AFTER, Admission, read_request_within, run_job
from .requests import EXPLAIN, PREDICT, HTTPError
from .routes import Context, Endpoint, Protocol, error_response, json_response
from .kserve_v1 import KSERVE_V1
from .metrics import METRICS
from .readiness import READINESS
from .state import ServeState
from .v2 import V2

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from ..explainer import Explainer


# ---- the native routes -----------------------------------------------------------------------
async def health(ctx: Context, request: "Request") -> "Response":
    batcher = ctx.batcher
    return json_response({"status": "ok", "device": ctx.explainer.device, "queued": batcher.queued,
                          "queue_size": ctx.config.queue_size, "running": batcher.running,
                          "batches": batcher.batches, "jobs": batcher.jobs})


async def model(ctx: Context, request: "Request") -> "Response":
    return json_response(ctx.info)


async def predict(ctx: Context, request: "Request") -> "Response":
    fields, image = await read_request_within(request, ctx.config)
    return json_response(await run_job(ctx, request, PREDICT.parse(fields, image, ctx.config)))


async def explain(ctx: Context, request: "Request") -> "Response":
    fields, image = await read_request_within(request, ctx.config)
    return json_response(await run_job(ctx, request, EXPLAIN.parse(fields, image, ctx.config)))


async def openapi(ctx: Context, request: "Request") -> "Response":
    from .. import __version__
    return json_response(document(ctx.protocols, request.scope.get("root_path", ""), ctx.config, __version__))


CLASSES = {"type": "array", "items": {"$ref": "#/components/schemas/Class"}}
NATIVE_SCHEMAS = {
    "Class": {"type": "object", "properties": {"index": {"type": "integer"}, "name": {"type": "string"},
                                               "score": {"type": "number"}, "probability": {"type": "number"}}},
    "Prediction": {"type": "object", "properties": {"output": {"type": "string"}, "top": CLASSES}},
    "Explanation": {"type": "object", "properties": {
        "target": {"type": "object"}, "params": {"type": "object"}, "layer": {"type": ["string", "null"]},
        "raw_shape": {"type": "array", "items": {"type": "integer"}},
        "width": {"type": "integer"}, "height": {"type": "integer"}, "extras": {"type": "object"},
        "overlay_png": {"type": "string", "contentEncoding": "base64",
                        "description": "The heatmap over the image, as PNG at the image's size."},
        "raw": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                "description": "The map at the method's resolution (only with raw: true)."}}},
    "ExplainResult": {"type": "object", "properties": {
        "method": {"type": "string"}, "layer": {"type": ["string", "null"]}, "predictions": CLASSES,
        "explanations": {"type": "array", "items": {"$ref": "#/components/schemas/Explanation"}}}},
}
POST_REFUSALS = (400, 408, 413, 415, 422, 503, 504)
NATIVE = Protocol("onnxplain", (
    Endpoint("/health", "GET", health, "Liveness, queue length and batch counters.", "Serving."),
    Endpoint("/model", "GET", model, "Inputs, outputs, preprocessing, spatial layers and methods.", "The model."),
    Endpoint("/predict", "POST", predict, "Top-k classes of one image.", "Top-k classes.", "Prediction",
             PREDICT, POST_REFUSALS),
    Endpoint("/explain", "POST", explain, "Top-k classes and a heatmap of one image by one method.",
             "The explanation.", "ExplainResult", EXPLAIN, POST_REFUSALS),
    Endpoint("/openapi.json", "GET", openapi, "This description.", "OpenAPI 3.1."),
), NATIVE_SCHEMAS)
PROTOCOLS: tuple[Protocol, ...] = (NATIVE, READINESS, METRICS, KSERVE_V1, V2)  # a protocol module's is added here


# ---- the app ---------------------------------------------------------------------------------
def create_app(explainer: "Explainer", *, max_batch: int = 8, max_body: int = 16 * 2**20, queue_size: int = 64,
               workers: int = 2, batch_wait: float = 0.005, name: str | None = None, token: str | None = None,
               warmup: tuple[str, ...] = (), timeout: float = 60.0, body_timeout: float = 10.0,
               header_timeout: float = 10.0) -> "Starlette":
    """The ASGI app serving one Explainer: run it under uvicorn or mount it into another ASGI app.

    Every request shares the explainer; model work runs in `workers` threads, in batches of up to
    `max_batch` requests; at most `queue_size` requests wait (503 beyond) and bodies over `max_body`
    bytes get 413. `name` is the model's name in KServe V1 / V2 paths (default: the file's stem); with `token`
    every route but health, readiness and ping needs `Authorization: Bearer TOKEN`; the app is ready (GET
    /readyz, /v2/health/ready) once a prediction and one explanation per `warmup` method have run.
    A body must arrive within `body_timeout` seconds (408) and an answer within `timeout`
    (504; the work is cancelled between batches, as when the client leaves); a request head within
    `header_timeout` (kept in app.state.config for uvicorn's protocol, onnxplain.serve.connection). The
    explainer's limits (max_pixels, max_forwards) refuse work with 413 before it is queued.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    config = ServeConfig(max_batch=max_batch, max_body=max_body, queue_size=queue_size, workers=workers,
                         batch_wait=batch_wait, timeout=timeout, body_timeout=body_timeout,
                         header_timeout=header_timeout)
    service = Service(explainer)
    batcher = Batcher(service.run, config)
    state = ServeState.create(service, batcher, name, token, warmup)
    batcher.run = state.metrics.batches(service.run)
    info = model_info(explainer)  # also builds the model's cached layer tables before threads share them
    ctx = Context(explainer, config, batcher, service, info, PROTOCOLS, state)

    async def http_error(request: "Request", exc: HTTPException) -> "Response":
        return error_response(exc.status_code, f"{exc.detail}.")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.readiness.start()
        yield
        batcher.close()

    admission = Admission(config.max_inflight)
    routes = [Route(e.path, state.wrap(e, _guarded(functools.partial(e.handler, ctx),
                                                   admission if e.method == "POST" else None)),
                    methods=[e.method])
              for protocol in PROTOCOLS for e in protocol.endpoints]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.explainer, app.state.batcher, app.state.config = explainer, batcher, config
    app.state.serve = state
    return app


def _guarded(endpoint: Callable, admission: Admission | None = None) -> Callable:
    """An endpoint whose refusals become {"error": sentence} answers: HTTPError, work over a limit (413),
    cancelled work (504), other UserErrors (400), a full queue or too many requests at once (503).

    With `admission` (model routes), the app refuses past its own in-flight limit before reading the body.
    """
    async def handler(request: "Request") -> "Response":
        try:
            with admission.admit() if admission is not None else contextlib.nullcontext():
                return await endpoint(request)
        except HTTPError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except LimitError as exc:
            return error_response(413, str(exc))
        except Cancelled as exc:
            return error_response(504, str(exc))
        except UserError as exc:
            return error_response(400, str(exc))
        except asyncio.QueueFull:
            return error_response(503, "The server is busy (its request queue is full); retry shortly.",
                                  RETRY_AFTER)
    return handler


def openapi_schema(root_path: str = "", config: ServeConfig | None = None) -> dict:
    """The OpenAPI 3.1 description of every route an app serves (paths relative to `root_path`)."""
    from .. import __version__
    return document(PROTOCOLS, root_path, config, __version__)


def model_info(explainer: "Explainer") -> dict:
    """What GET /model answers: inputs, outputs, preprocessing, spatial layers, the auto layer, methods."""
    from ..methods import list_methods

    model = explainer.model
    try:
        auto = model.auto_layer()[0]
    except UserError:
        auto = None
    return {
        "inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in model.inputs],
        "outputs": [{"name": o.name, "dtype": o.dtype, "shape": list(o.shape)} for o in model.outputs],
        "input_layout": explainer.spec.layout,
        "preprocess": asdict(explainer.preprocess),
        "labels": len(explainer.labels or []),
        "device": explainer.device,
        "spatial_layers": [{"name": t.name, "op": t.op_type, "shape": list(t.shape) if t.shape else None,
                            "layout": t.layout} for t in model.spatial_layers],
        "auto_layer": auto,
        "methods": list_methods(),
    }


def warm_up(explainer: "Explainer") -> None:
    """One prediction on a blank image, so the first request does not pay for building the session."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
    explainer.predict(png.tobytes())
