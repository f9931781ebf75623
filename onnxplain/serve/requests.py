"""Request models: the fields a route takes, how each is read, and the jobs they become.

A `RequestModel` is the one description of a request body: `parse` reads JSON values or form strings into a
PredictJob or ExplainJob (422 with one sentence for a malformed field), and openapi.py writes the OpenAPI
schemas from the same fields, so the document cannot drift from what the routes accept. `read_request` takes
the fields and image bytes from a multipart, JSON or raw image body.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .config import ServeConfig

if TYPE_CHECKING:
    from starlette.requests import Request


class HTTPError(Exception):
    """A request the server refuses before any model work: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


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


# ---- field validators: (name, value, low, high) -> the value, or HTTPError(422) ---------------
def _text(name: str, value: Any, low: Any = None, high: Any = None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise HTTPError(422, f"Field '{name}' must be a string.")
    return value


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise HTTPError(422, f"Field '{name}' must be an integer from {low} to {high}.")
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    try:
        value = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise HTTPError(422, f"Field '{name}' must be a number from {low} to {high}.")
    return value


def _flag(name: str, value: Any, low: Any = None, high: Any = None) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no", ""):
        return value.lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise HTTPError(422, f"Field '{name}' must be true or false.")
    return value


def _params(name: str, value: Any, low: Any = None, high: Any = None) -> dict:
    """Method parameters: a JSON object, or (in forms and query strings) its text."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            value = None
    if not isinstance(value, dict):
        raise HTTPError(422, "Field 'params' must be a JSON object of method parameters, e.g. {\"relu\": true}.")
    return value


def _target(name: str, value: Any, low: Any = None, high: Any = None) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise HTTPError(422, "Field 'target' must be predicted, a class index, topK, a class name or a box.")
    return value


# kind -> (validator, the OpenAPI schema of its values)
KINDS: dict[str, tuple[Callable, dict]] = {
    "text": (_text, {"type": "string"}),
    "integer": (_integer, {"type": "integer"}),
    "number": (_number, {"type": "number"}),
    "flag": (_flag, {"type": "boolean"}),
    "params": (_params, {"type": "object"}),
    "target": (_target, {"oneOf": [{"type": "string"}, {"type": "integer"}]}),
}


@dataclass(frozen=True)
class Field:
    """One request field besides the image: its kind (a key of KINDS), default, bounds and documentation."""
    name: str
    kind: str
    description: str
    default: Any = None
    low: float | None = None
    high: float | str | None = None  # a number, or the ServeConfig setting that bounds it (e.g. "max_top")
    required: str | None = None      # the sentence when it is missing; None: optional
    example: Any = None

    def bounds(self, config: ServeConfig) -> tuple[Any, Any]:
        high = getattr(config, self.high) if isinstance(self.high, str) else self.high
        return self.low, high

    def read(self, fields: dict, config: ServeConfig) -> Any:
        """The field's value from JSON values or form strings; HTTPError(422) when missing or malformed."""
        value = fields.get(self.name, self.default)
        value = KINDS[self.kind][0](self.name, value, *self.bounds(config))
        if value is None and self.required:
            raise HTTPError(422, self.required)
        return value

    def schema(self, config: ServeConfig) -> dict:
        """The field in OpenAPI (JSON Schema): type, bounds, default, example and description."""
        schema = dict(KINDS[self.kind][1])
        low, high = self.bounds(config)
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        if self.default is not None:
            schema["default"] = self.default
        if self.example is not None:
            schema["examples"] = [self.example]
        schema["description"] = self.description
        return schema


@dataclass(frozen=True)
class RequestModel:
    """The body of one route: an image plus `fields`, parsed into `job` (whose dataclass fields they are)."""
    name: str                 # names its OpenAPI schemas: NAME + Form / Json
    job: type
    fields: tuple[Field, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Every field the route takes, the image first."""
        return ("image",) + tuple(f.name for f in self.fields)

    def parse(self, fields: dict, image: bytes, config: ServeConfig) -> Any:
        """The job from request fields (JSON values or form strings); 422 for an unknown or malformed field."""
        unknown = sorted(set(fields) - set(self.names))
        if unknown:
            raise HTTPError(422, f"Unknown field '{unknown[0]}'; this endpoint takes {', '.join(self.names)}.")
        return self.job(image, **{f.name: f.read(fields, config) for f in self.fields})


TOP = Field("top", "integer", "Classes to return.", default=5, low=1, high="max_top", example=3)
OUTPUT = Field("output", "text", "Model output (default: the first).")
PREDICT = RequestModel("Predict", PredictJob, (TOP, OUTPUT))
EXPLAIN = RequestModel("Explain", ExplainJob, (
    TOP, OUTPUT,
    Field("method", "text", "A method from GET /model, e.g. eigen-cam.", example="eigen-cam",
          required="Field 'method' is required; see GET /model for the methods."),
    Field("target", "target", "predicted | class index | topK | class name | box:x1,y1,x2,y2[:class].",
          default="predicted", example="top3"),
    Field("layer", "text", "Tensor name, auto or last-conv.", default="auto", example="last-conv"),
    Field("probability", "flag", "Explain the softmax probability.", default=False, example=True),
    Field("params", "params", "Method parameters (JSON text in a form).", example={"relu": False}),
    Field("raw", "flag", "Also return the raw map as a float array.", default=False, example=True),
    Field("alpha", "number", "Overlay opacity.", default=0.5, low=0.0, high=1.0, example=0.3),
    Field("colormap", "text", "Overlay colormap.", default="jet", example="turbo"),
))
PREDICT_FIELDS = PREDICT.names
EXPLAIN_FIELDS = EXPLAIN.names


def predict_job(fields: dict, image: bytes, config: ServeConfig) -> PredictJob:
    """A PredictJob from request fields (JSON values or form strings); 422 for a malformed field."""
    return PREDICT.parse(fields, image, config)


def explain_job(fields: dict, image: bytes, config: ServeConfig) -> ExplainJob:
    """An ExplainJob from request fields (JSON values or form strings); 422 for a malformed field."""
    return EXPLAIN.parse(fields, image, config)


# ---- reading request bodies ------------------------------------------------------------------
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
        fields.update(_json_fields(body))
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


def _json_fields(body: bytes) -> dict:
    """The fields of a JSON body; 422 when it is not a JSON object."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's parser takes
        raise HTTPError(422, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise HTTPError(422, "The JSON body must be an object with the image in base64 under 'image'.")
    return data


async def _parse_form(request: "Request", body: bytes):
    """The multipart form of an already-read body (replayed to starlette's parser); 422 when it is malformed."""
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
