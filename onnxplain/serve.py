"""HTTP server around one loaded Explainer: /health, /model, /predict, /explain and /openapi.json.

`create_app(explainer)` returns a Starlette (ASGI) app to run under uvicorn or mount into another ASGI app;
`onnxplain serve` (onnxplain/cli/serve.py) runs it. One Explainer and its onnxruntime sessions serve every
request. Model work runs in a bounded thread pool, fed by a micro-batcher whose bounded queue answers 503
when full. Requests carry image bytes only: the server never opens a path that a request names.
Starlette and uvicorn are imported only when an app is built, so `onnxplain --help` stays fast.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import UserError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from .explainer import Explainer, Prediction
    from .methods.base import Attribution

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one app: batch size, body size, queue length, worker threads and batching window."""
    max_batch: int = 8                 # requests run as one forward at most
    max_body: int = 16 * 2**20         # bytes per request body (413 beyond)
    queue_size: int = 64               # requests waiting for a worker at most (503 beyond)
    workers: int = 2                   # threads running model work (each runs one batch at a time)
    batch_wait: float = 0.005          # seconds a lone request waits for others to batch with
    max_top: int = 1000                # largest `top` a request may ask for

    def __post_init__(self):
        for name in ("max_batch", "max_body", "queue_size", "workers", "max_top"):
            if getattr(self, name) < 1:
                raise UserError(f"The server setting '{name}' must be at least 1.")
        if self.batch_wait < 0:
            raise UserError("The server setting 'batch_wait' cannot be negative.")


class HTTPError(Exception):
    """A request the server refuses before any model work: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- jobs: what one request asks of the model ------------------------------------------------
@dataclass(frozen=True, eq=False)
class PredictJob:
    """Top-k classes of one image."""
    image: bytes
    top: int = 5
    output: str | None = None

    def key(self) -> tuple:
        """Jobs with equal keys run as one forward."""
        return ("predict", self.output)


@dataclass(frozen=True, eq=False)
class ExplainJob:
    """One explanation of one image; rendering options (top, raw, alpha, colormap) are per job."""
    image: bytes
    method: str
    target: str | int = "predicted"
    layer: str = "auto"
    output: str | None = None
    probability: bool = False
    params: dict = field(default_factory=dict)
    top: int = 5
    raw: bool = False
    alpha: float = 0.5
    colormap: str = "jet"

    def key(self) -> tuple:
        """Jobs with equal keys (method, target, layer, output, params) run as one batch."""
        return ("explain", self.method, self.target, self.layer, self.output, self.probability,
                json.dumps(self.params, sort_keys=True, default=str))


PREDICT_FIELDS = ("image", "top", "output")
EXPLAIN_FIELDS = PREDICT_FIELDS + ("method", "target", "layer", "probability", "params", "raw", "alpha", "colormap")


def predict_job(fields: dict, image: bytes, config: ServeConfig) -> PredictJob:
    """A PredictJob from request fields (JSON values or form strings); 422 for a malformed field."""
    _check_fields(fields, PREDICT_FIELDS)
    return PredictJob(image, top=_integer(fields, "top", 5, 1, config.max_top), output=_text(fields, "output", None))


def explain_job(fields: dict, image: bytes, config: ServeConfig) -> ExplainJob:
    """An ExplainJob from request fields (JSON values or form strings); 422 for a malformed field."""
    _check_fields(fields, EXPLAIN_FIELDS)
    method = _text(fields, "method", None)
    if method is None:
        raise HTTPError(422, "Field 'method' is required; see GET /model for the methods.")
    target = fields.get("target", "predicted")
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise HTTPError(422, "Field 'target' must be predicted, a class index, topK, a class name or a box.")
    return ExplainJob(image, method=method, target=target, layer=_text(fields, "layer", "auto"),
                      output=_text(fields, "output", None), probability=_flag(fields, "probability"),
                      params=_params(fields.get("params")), top=_integer(fields, "top", 5, 1, config.max_top),
                      raw=_flag(fields, "raw"), alpha=_number(fields, "alpha", 0.5, 0.0, 1.0),
                      colormap=_text(fields, "colormap", "jet"))


def _check_fields(fields: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise HTTPError(422, f"Unknown field '{unknown[0]}'; this endpoint takes {', '.join(allowed)}.")


def _text(fields: dict, name: str, default: str | None) -> str | None:
    value = fields.get(name, default)
    if value is not None and not isinstance(value, str):
        raise HTTPError(422, f"Field '{name}' must be a string.")
    return value


def _integer(fields: dict, name: str, default: int, low: int, high: int) -> int:
    value = fields.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HTTPError(422, f"Field '{name}' must be an integer from {low} to {high}.")
    return value


def _number(fields: dict, name: str, default: float, low: float, high: float) -> float:
    value = fields.get(name, default)
    try:
        value = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise HTTPError(422, f"Field '{name}' must be a number from {low} to {high}.")
    return value


def _flag(fields: dict, name: str) -> bool:
    value = fields.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise HTTPError(422, f"Field '{name}' must be true or false.")
    return value


def _params(value: Any) -> dict:
    """Method parameters: a JSON object, or (in forms and query strings) its text."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise HTTPError(422, "Field 'params' must be a JSON object of method parameters, e.g. {\"relu\": true}.")
    return value


# ---- reading requests ------------------------------------------------------------------------
async def read_body(request: "Request", limit: int) -> bytes:
    """The request body, refused with 413 once Content-Length or the bytes actually streamed pass `limit`."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"The request body has {int(length)} bytes; this server takes at most {limit}.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"The request body passed {limit} bytes, the most this server takes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_request(request: "Request", limit: int) -> tuple[dict, bytes]:
    """Fields and image bytes from multipart (file field 'image'), JSON (base64 'image') or a raw image body.

    Query parameters give fields too; fields in the body win.
    """
    body = await read_body(request, limit)
    fields: dict = dict(request.query_params)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(body)
        except ValueError:
            raise HTTPError(422, "The body is not valid JSON.") from None
        if not isinstance(data, dict):
            raise HTTPError(422, "The JSON body must be an object with the image in base64 under 'image'.")
        fields.update(data)
    elif kind == "multipart/form-data":
        form = await _parse_form(request, body)
        upload = form.get("image")
        others = {k: v for k, v in form.items() if k != "image"}
        if not all(isinstance(v, str) for v in others.values()):
            raise HTTPError(422, "Only field 'image' may be a file; send the other fields as text.")
        fields.update(others)
        fields["image"] = await upload.read() if hasattr(upload, "read") else upload
        await form.close()
    elif kind.startswith("image/") or kind == "application/octet-stream":
        fields["image"] = body
    else:
        raise HTTPError(415, "Send the image as multipart/form-data (file field 'image'), as JSON with the image "
                             "in base64 under 'image', or as a raw image/* body.")
    image = fields.pop("image", None)
    if image is None:
        raise HTTPError(422, "The request has no 'image' field; send the encoded image file.")
    if isinstance(image, str):
        image = _base64(image)
    if not isinstance(image, bytes):
        raise HTTPError(422, "Field 'image' must be the image file, or in JSON its bytes in base64.")
    return fields, image


async def _parse_form(request: "Request", body: bytes):
    """The multipart form of an already-read body; 422 when it is malformed."""
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException
    from starlette.requests import Request

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=len(EXPLAIN_FIELDS),
                                                         max_part_size=max(len(body), 1))
    except (HTTPException, MultiPartException) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", "")
        raise HTTPError(422, f"The multipart body is malformed ({str(detail).rstrip('.')}).") from None


def _base64(text: str) -> bytes:
    """Bytes of a base64 string (a `data:...;base64,` prefix allowed); 400 when it is not base64."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "Field 'image' is not valid base64; send the encoded image file's bytes in "
                             "base64 (a path is never read).") from None


# ---- the micro-batcher -----------------------------------------------------------------------
@dataclass
class _Pending:
    key: tuple
    job: Any
    future: asyncio.Future


class Batcher:
    """Collects jobs for a few ms into batches of up to `max_batch` and runs each batch in a bounded thread pool.

    At most `queue_size` jobs wait; `submit` raises asyncio.QueueFull beyond that, so memory stays bounded.
    Jobs with equal keys in one batch run as one call `run(key, jobs)`; a group that fails with a UserError
    is retried job by job, so each request gets its own answer.
    """

    def __init__(self, run: Callable[[tuple, list], list], config: ServeConfig):
        self.run = run
        self.config = config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="onnxplain-serve")
        self.batches = 0   # batches run so far
        self.jobs = 0      # jobs run so far
        self.running = 0   # jobs being computed now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, key: tuple, job: Any) -> Any:
        """The job's result once its batch has run; raises QueueFull at once when the queue is full."""
        self._start()
        future = self._loop.create_future()
        self._queue.put_nowait(_Pending(key, job, future))
        return await future

    def close(self) -> None:
        """Stop collecting and let the pool's threads end after their current batch."""
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _start(self) -> None:
        """Queue and collector on the running loop, made on the first request (so any host app works)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._queue = asyncio.Queue(self.config.queue_size)
        self._slots = asyncio.Semaphore(self.config.workers)
        self._spawn(self._collect())

    def _spawn(self, coroutine) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _collect(self) -> None:
        """Wait for a free worker, then take up to max_batch jobs (waiting batch_wait for a short batch)."""
        config = self.config
        while True:
            await self._slots.acquire()
            items = [await self._queue.get()]
            if config.max_batch > 1 and config.batch_wait > 0 and self._queue.qsize() < config.max_batch - 1:
                await asyncio.sleep(config.batch_wait)
            while len(items) < config.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            self._spawn(self._dispatch(items))

    async def _dispatch(self, items: list[_Pending]) -> None:
        live = [p for p in items if not p.future.done()]  # a client that left no longer waits
        self.running += len(live)
        try:
            outcomes = await self._loop.run_in_executor(self.pool, self._run_batch, [(p.key, p.job) for p in live])
        except Exception as exc:  # the pool itself failed: every job gets the error
            outcomes = [(None, exc)] * len(live)
        finally:
            self.running -= len(live)
            self._slots.release()
        self.batches += 1
        self.jobs += len(live)
        for pending, (value, error) in zip(live, outcomes):
            if not pending.future.done():
                if error is None:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(error)

    def _run_batch(self, jobs: list[tuple[tuple, Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run each group of equal keys as one call (in a worker thread); (result, error) per job."""
        groups: dict[tuple, list[int]] = {}
        for i, (key, _) in enumerate(jobs):
            groups.setdefault(key, []).append(i)
        outcomes: list = [None] * len(jobs)
        for key, index in groups.items():
            for i, outcome in zip(index, self._run_group(key, [jobs[i][1] for i in index])):
                outcomes[i] = outcome
        return outcomes

    def _run_group(self, key: tuple, jobs: list) -> list[tuple[Any, BaseException | None]]:
        try:
            return [(value, None) for value in self.run(key, jobs)]
        except UserError as exc:
            if len(jobs) == 1:
                return [(None, exc)]
            return [self._run_group(key, [job])[0] for job in jobs]
        except Exception as exc:  # a bug: the handler re-raises it and the server logs its traceback
            return [(None, exc)] * len(jobs)


# ---- the model work --------------------------------------------------------------------------
class Service:
    """Batched predict and explain on one shared Explainer; called in worker threads."""

    def __init__(self, explainer: "Explainer"):
        self.explainer = explainer
        self._torch = threading.Lock()  # torch methods set taps and relu rules on the one shared module

    def run(self, key: tuple, jobs: list) -> list[dict]:
        return self.predict(jobs) if key[0] == "predict" else self.explain(jobs)

    def predict(self, jobs: list[PredictJob]) -> list[dict]:
        """Top-k per job from one forward over all the jobs' images."""
        predictions = self.explainer.predict([job.image for job in jobs], top=max(j.top for j in jobs),
                                             output=jobs[0].output)
        return [_prediction(p, job.top) for p, job in zip(predictions, jobs)]

    def explain(self, jobs: list[ExplainJob]) -> list[dict]:
        """One explain call for jobs sharing method, target, layer and params; top-k from the same forward."""
        from . import methods

        first, explainer = jobs[0], self.explainer
        batch = explainer.prepare([job.image for job in jobs])
        engine = methods.get(first.method).engine
        with self._torch if engine == "torch" else contextlib.nullcontext():
            attributions = explainer.explain(batch, method=first.method, target=first.target, layer=first.layer,
                                             output=first.output, probability=first.probability, **first.params)
        if len(jobs) > 1 and len(attributions) % len(jobs):
            return [self.explain([job])[0] for job in jobs]
        predictions = explainer.predict(batch, top=max(j.top for j in jobs), output=first.output)
        per = len(attributions) // len(jobs)
        return [{"method": first.method, "layer": attributions[0].layer if attributions else None,
                 "predictions": _prediction(prediction, job.top)["top"],
                 "explanations": [_explanation(a, job) for a in attributions[i * per:(i + 1) * per]]}
                for i, (job, prediction) in enumerate(zip(jobs, predictions))]


def _prediction(prediction: "Prediction", top: int) -> dict:
    return {"output": prediction.output, "top": prediction.as_dict()["top"][:top]}


def _explanation(attribution: "Attribution", job: ExplainJob) -> dict:
    """One attribution as JSON: target, params, sizes, the overlay as base64 PNG, the raw map when asked."""
    from .render import encode_png

    summary = attribution.summary()
    height, width = attribution.heatmap.shape[:2]
    entry = {"target": summary["target"], "params": summary["params"], "layer": summary["layer"],
             "raw_shape": summary["raw_shape"], "width": int(width), "height": int(height),
             "extras": summary["extras"],
             "overlay_png": base64.b64encode(encode_png(attribution.overlay(job.alpha, job.colormap))).decode()}
    if job.raw:
        entry["raw"] = attribution.raw.astype(float).tolist()
    return entry


def model_info(explainer: "Explainer") -> dict:
    """What GET /model answers: inputs, outputs, preprocessing, spatial layers, the auto layer, methods."""
    from .methods import list_methods

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


# ---- the app ---------------------------------------------------------------------------------
def create_app(explainer: "Explainer", *, max_batch: int = 8, max_body: int = 16 * 2**20, queue_size: int = 64,
               workers: int = 2, batch_wait: float = 0.005) -> "Starlette":
    """The ASGI app serving one Explainer: run it under uvicorn or mount it into another ASGI app.

    Every request shares the explainer; model work runs in `workers` threads, in batches of up to
    `max_batch` requests; at most `queue_size` requests wait (503 beyond) and bodies over `max_body`
    bytes get 413.
    """
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.routing import Route

    from . import methods
    from .render import COLORMAPS

    config = ServeConfig(max_batch=max_batch, max_body=max_body, queue_size=queue_size, workers=workers,
                         batch_wait=batch_wait)
    service = Service(explainer)
    batcher = Batcher(service.run, config)
    info = model_info(explainer)  # also builds the model's cached layer tables before threads share them

    def check(job: ExplainJob) -> None:
        """Refuse an unknown method, parameter, output, layer or colormap before the job is queued."""
        cls = methods.get(job.method)
        cls.make_params(**job.params)
        output = explainer.output_name(job.output)
        if cls.uses_layer:
            layer = explainer.model.resolve_layer(job.layer, output)
            if cls.engine == "ort":
                explainer.model.spatial_info(layer)
        if job.colormap not in COLORMAPS:
            raise HTTPError(400, f"Unknown colormap '{job.colormap}'; use one of {', '.join(COLORMAPS)}.")

    async def health(request: "Request") -> "Response":
        return _json({"status": "ok", "device": explainer.device, "queued": batcher.queued,
                      "queue_size": config.queue_size, "running": batcher.running, "batches": batcher.batches,
                      "jobs": batcher.jobs})

    async def model(request: "Request") -> "Response":
        return _json(info)

    async def predict(request: "Request") -> "Response":
        fields, image = await read_request(request, config.max_body)
        job = predict_job(fields, image, config)
        explainer.output_name(job.output)
        return _json(await batcher.submit(job.key(), job))

    async def explain(request: "Request") -> "Response":
        fields, image = await read_request(request, config.max_body)
        job = explain_job(fields, image, config)
        check(job)
        return _json(await batcher.submit(job.key(), job))

    async def openapi(request: "Request") -> "Response":
        return _json(openapi_schema(request.scope.get("root_path", "")))

    async def http_error(request: "Request", exc: HTTPException) -> "Response":
        return _error(exc.status_code, f"{exc.detail}.")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = Starlette(routes=[Route("/health", health), Route("/model", model),
                            Route("/predict", _guarded(predict), methods=["POST"]),
                            Route("/explain", _guarded(explain), methods=["POST"]),
                            Route("/openapi.json", openapi)],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.explainer, app.state.batcher, app.state.config = explainer, batcher, config
    return app


def _guarded(endpoint: Callable) -> Callable:
    """An endpoint whose refusals become {"error": sentence} answers: HTTPError, UserError (400), full queue (503)."""
    async def handler(request: "Request") -> "Response":
        try:
            return await endpoint(request)
        except HTTPError as exc:
            return _error(exc.status, exc.message)
        except UserError as exc:
            return _error(400, str(exc))
        except asyncio.QueueFull:
            return _error(503, "The server is busy (its request queue is full); retry shortly.",
                          {"Retry-After": "1"})
    return handler


def _json(data: Any, status: int = 200, headers: dict | None = None) -> "Response":
    from starlette.responses import Response
    return Response(json.dumps(data, default=str), status, headers, media_type="application/json")


def _error(status: int, message: str, headers: dict | None = None) -> "Response":
    return _json({"error": message}, status, headers)


# ---- OpenAPI ---------------------------------------------------------------------------------
def openapi_schema(root_path: str = "") -> dict:
    """The OpenAPI 3.1 description of the endpoints (written by hand; paths are relative to `root_path`)."""
    from . import __version__

    def ref(name: str) -> dict:
        return {"$ref": f"#/components/schemas/{name}"}

    def answer(description: str, schema: str = "Error") -> dict:
        return {"description": description, "content": {"application/json": {"schema": ref(schema)}}}

    refusals = {"400": answer("The image does not decode, or an unknown method, parameter, layer or class."),
                "413": answer("The body is larger than --max-body."),
                "415": answer("The body is not multipart, JSON or an image."),
                "422": answer("Malformed JSON, multipart or field."),
                "503": answer("The request queue is full; retry shortly.")}

    def body(schema: str) -> dict:
        return {"required": True, "content": {
            "multipart/form-data": {"schema": ref(schema + "Form")},
            "application/json": {"schema": ref(schema + "Json")},
            "image/*": {"schema": {"type": "string", "format": "binary"},
                        "description": "The raw image; other fields as query parameters."}}}

    predict_fields = {
        "top": {"type": "integer", "minimum": 1, "default": 5, "description": "Classes to return."},
        "output": {"type": "string", "description": "Model output (default: the first)."}}
    explain_fields = {
        **predict_fields,
        "method": {"type": "string", "description": "A method from GET /model, e.g. eigen-cam."},
        "target": {"oneOf": [{"type": "string"}, {"type": "integer"}], "default": "predicted",
                   "description": "predicted | class index | topK | class name | box:x1,y1,x2,y2[:class]."},
        "layer": {"type": "string", "default": "auto", "description": "Tensor name, auto or last-conv."},
        "probability": {"type": "boolean", "default": False, "description": "Explain the softmax probability."},
        "params": {"type": "object", "description": "Method parameters (JSON text in a form)."},
        "raw": {"type": "boolean", "default": False, "description": "Also return the raw map as a float array."},
        "alpha": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5, "description": "Overlay opacity."},
        "colormap": {"type": "string", "default": "jet", "description": "Overlay colormap."}}

    def form(fields: dict, required: list[str]) -> dict:
        return {"type": "object", "required": ["image"] + required,
                "properties": {"image": {"type": "string", "format": "binary"}, **fields}}

    def as_json(fields: dict, required: list[str]) -> dict:
        return {"type": "object", "required": ["image"] + required, "properties": {
            "image": {"type": "string", "contentEncoding": "base64", "description": "The image file in base64."},
            **fields}}

    top = {"type": "array", "items": ref("Class")}
    schemas = {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "Class": {"type": "object", "properties": {"index": {"type": "integer"}, "name": {"type": "string"},
                                                   "score": {"type": "number"}, "probability": {"type": "number"}}},
        "PredictForm": form(predict_fields, []), "PredictJson": as_json(predict_fields, []),
        "ExplainForm": form(explain_fields, ["method"]), "ExplainJson": as_json(explain_fields, ["method"]),
        "Prediction": {"type": "object", "properties": {"output": {"type": "string"}, "top": top}},
        "Explanation": {"type": "object", "properties": {
            "target": {"type": "object"}, "params": {"type": "object"}, "layer": {"type": ["string", "null"]},
            "raw_shape": {"type": "array", "items": {"type": "integer"}},
            "width": {"type": "integer"}, "height": {"type": "integer"}, "extras": {"type": "object"},
            "overlay_png": {"type": "string", "contentEncoding": "base64",
                            "description": "The heatmap over the image, as PNG at the image's size."},
            "raw": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                    "description": "The map at the method's resolution (only with raw: true)."}}},
        "ExplainResult": {"type": "object", "properties": {
            "method": {"type": "string"}, "layer": {"type": ["string", "null"]}, "predictions": top,
            "explanations": {"type": "array", "items": ref("Explanation")}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "onnxplain", "version": __version__,
                 "description": "Predictions and explanations from one ONNX image model."},
        "servers": [{"url": root_path or "/"}],
        "paths": {
            "/health": {"get": {"summary": "Liveness, queue length and batch counters.",
                                "responses": {"200": {"description": "Serving."}}}},
            "/model": {"get": {"summary": "Inputs, outputs, preprocessing, spatial layers and methods.",
                               "responses": {"200": {"description": "The model."}}}},
            "/predict": {"post": {"summary": "Top-k classes of one image.", "requestBody": body("Predict"),
                                  "responses": {"200": answer("Top-k classes.", "Prediction"), **refusals}}},
            "/explain": {"post": {"summary": "Top-k classes and a heatmap of one image by one method.",
                                  "requestBody": body("Explain"),
                                  "responses": {"200": answer("The explanation.", "ExplainResult"), **refusals}}},
            "/openapi.json": {"get": {"summary": "This description.",
                                      "responses": {"200": {"description": "OpenAPI 3.1."}}}},
        },
        "components": {"schemas": schemas},
    }


# ---- start-up ---------------------------------------------------------------------------------
def warm_up(explainer: "Explainer") -> None:
    """One prediction on a blank image, so the first request does not pay for building the session."""
    import cv2
    import numpy as np

    ok, png = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
    explainer.predict(png.tobytes())
