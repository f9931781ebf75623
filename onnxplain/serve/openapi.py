"""The OpenAPI 3.1 document, generated from the protocols' endpoints and the request models they take."""
from __future__ import annotations

from typing import Iterable

from .config import ServeConfig
from .requests import RequestModel
from .routes import Protocol

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
REFUSALS = {400: "The image does not decode, or an unknown method, parameter, layer or class.",
            401: "A bearer token is needed (the server runs with --token).",
            404: "No model of that name is served here.",
            408: "The body did not arrive within --body-timeout.",
            413: "The body is larger than --max-body, the image over --max-pixels, or the work over --max-forwards.",
            415: "The body is not multipart, JSON or an image.",
            422: "Malformed JSON, multipart or field.",
            503: "The server is busy (queue full or too many requests at once) or still warming up; retry after "
                 "Retry-After seconds.",
            504: "The answer was not ready within --timeout; the work was cancelled."}


def document(protocols: Iterable[Protocol], root_path: str = "", config: ServeConfig | None = None,
             version: str = "") -> dict:
    """The OpenAPI description of every endpoint of `protocols` (paths relative to `root_path`); field bounds
    that depend on the app's limits (e.g. `top`) are those of `config`."""
    config = config or ServeConfig()
    schemas: dict[str, dict] = {"Error": ERROR}
    paths: dict[str, dict] = {}
    for protocol in protocols:
        schemas.update(protocol.schemas)
        for endpoint in protocol.endpoints:
            operation = {"summary": endpoint.summary,
                         "responses": {"200": _answer(endpoint.answer, endpoint.schema),
                                       **{str(s): _answer(REFUSALS[s], "Error") for s in endpoint.refusals}}}
            if endpoint.request is not None:
                operation["requestBody"] = request_body(endpoint.request)
                schemas.update(request_schemas(endpoint.request, config))
            elif endpoint.body is not None:
                operation["requestBody"] = {"required": True,
                                            "content": {"application/json": {"schema": _ref(endpoint.body)}}}
            paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "onnxplain", "version": version,
                 "description": "Predictions and explanations from one ONNX image model."},
        "servers": [{"url": root_path or "/"}],
        "paths": paths,
        "components": {"schemas": schemas},
    }


def request_body(model: RequestModel) -> dict:
    """The three ways to send `model`: multipart, JSON, or the raw image with the fields as query parameters."""
    return {"required": True, "content": {
        "multipart/form-data": {"schema": _ref(model.name + "Form")},
        "application/json": {"schema": _ref(model.name + "Json")},
        "image/*": {"schema": {"type": "string", "format": "binary"},
                    "description": "The raw image; other fields as query parameters."}}}


def request_schemas(model: RequestModel, config: ServeConfig) -> dict[str, dict]:
    """NAME + Form (the image as a file) and NAME + Json (the image in base64), from the model's fields."""
    fields = {f.name: f.schema(config) for f in model.fields}
    required = ["image"] + [f.name for f in model.fields if f.required]
    images = {"Form": {"type": "string", "format": "binary", "description": "The image file."},
              "Json": {"type": "string", "contentEncoding": "base64", "description": "The image file in base64."}}
    return {model.name + kind: {"type": "object", "required": required, "properties": {"image": image, **fields}}
            for kind, image in images.items()}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, schema: str | None) -> dict:
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}
