"""The KServe V1 protocol: GET /v1/models, GET /v1/models/{name}, POST /v1/models/{name}:predict and :explain.

Instances are images in base64 (`{"b64": ...}`, `{"image": {"b64": ...}}` or a bare base64 string); the
optional `parameters` object takes the fields of POST /predict or /explain (method, target, layer, ...).
Answers are KServe's `{"predictions": [...]}` (the top-k classes per instance) and `{"explanations": [...]}`
(an /explain answer per instance); refusals are KServe's `{"error": sentence}`.
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from .guard import read_body_within, run_job
from .requests import EXPLAIN, PREDICT, HTTPError, RequestModel, _base64
from .routes import Endpoint, Protocol, json_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .routes import Context


def check_name(ctx: "Context", request: "Request") -> str:
    """The model name of the path; 404 when this server does not serve it."""
    name = request.path_params["name"]
    if name != ctx.state.name:
        raise HTTPError(404, f"Model '{name}' is not served here; this server serves '{ctx.state.name}'.")
    return name


async def read_json(request: "Request", ctx: "Context") -> dict:
    """The JSON object of the body; 422 when it is not one."""
    try:
        data = json.loads(await read_body_within(request, ctx.config))
    except ValueError:
        raise HTTPError(422, "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise HTTPError(422, "The JSON body must be an object.")
    return data


def instance_bytes(instance: Any) -> bytes:
    """The image of one V1 instance: {"b64": ...}, {"image": {"b64": ...}}, {"image_bytes": {"b64": ...}} or
    a base64 string; 422 for anything else."""
    if isinstance(instance, dict) and len(instance) == 1:
        key, value = next(iter(instance.items()))
        if key == "b64" and isinstance(value, str):
            return _base64(value)
        if key in ("image", "image_bytes"):
            return instance_bytes(value)
    if isinstance(instance, str):
        return _base64(instance)
    raise HTTPError(422, 'Each instance must be an image in base64, as {"b64": "..."}.')


async def run_jobs(ctx: "Context", request: "Request", model: RequestModel, fields: dict,
                   images: list[bytes]) -> list:
    """One job per image with the same fields, each checked (names, pixels, forwards) and run under the
    server's deadline and cancellation (guard.run_job), together."""
    jobs = [model.parse(fields, image, ctx.config) for image in images]
    return list(await asyncio.gather(*(run_job(ctx, request, job) for job in jobs)))


async def _instances(ctx: "Context", request: "Request") -> tuple[dict, list[bytes]]:
    check_name(ctx, request)
    body = await read_json(request, ctx)
    instances = body.get("instances", body.get("inputs"))
    if not isinstance(instances, list) or not instances:
        raise HTTPError(422, 'The body needs "instances": a list of images as {"b64": "..."}.')
    fields = body.get("parameters") or {}
    if not isinstance(fields, dict):
        raise HTTPError(422, 'Field "parameters" must be an object of /predict or /explain fields.')
    return fields, [instance_bytes(i) for i in instances]


async def models(ctx: "Context", request: "Request") -> "Response":
    return json_response({"models": [ctx.state.name]})


async def model(ctx: "Context", request: "Request") -> "Response":
    return json_response({"name": check_name(ctx, request), "ready": ctx.state.readiness.ready})


async def predict(ctx: "Context", request: "Request") -> "Response":
    fields, images = await _instances(ctx, request)
    results = await run_jobs(ctx, request, PREDICT, fields, images)
    return json_response({"predictions": [r["top"] for r in results]})


async def explain(ctx: "Context", request: "Request") -> "Response":
    fields, images = await _instances(ctx, request)
    return json_response({"explanations": await run_jobs(ctx, request, EXPLAIN, fields, images)})


INSTANCES = {"type": "array", "items": {"type": "object", "required": ["b64"],
                                        "properties": {"b64": {"type": "string", "contentEncoding": "base64"}}}}
SCHEMAS = {
    "V1Models": {"type": "object", "properties": {"models": {"type": "array", "items": {"type": "string"}}}},
    "V1Model": {"type": "object", "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "V1Request": {"type": "object", "required": ["instances"], "properties": {
        "instances": INSTANCES, "parameters": {"type": "object", "description": "Fields of /predict or /explain."}}},
    "V1Predictions": {"type": "object", "properties": {"predictions": {
        "type": "array", "items": {"type": "array", "items": {"$ref": "#/components/schemas/Class"}}}}},
    "V1Explanations": {"type": "object", "properties": {"explanations": {
        "type": "array", "items": {"$ref": "#/components/schemas/ExplainResult"}}}},
}
REFUSALS = (400, 404, 413, 422, 503)
KSERVE_V1 = Protocol("kserve-v1", (
    Endpoint("/v1/models", "GET", models, "KServe V1: the models served.", "Model names.", "V1Models"),
    Endpoint("/v1/models/{name}", "GET", model, "KServe V1: whether the model is ready.", "Readiness.",
             "V1Model", refusals=(404,)),
    Endpoint("/v1/models/{name}:predict", "POST", predict, "KServe V1 predict: top-k classes per instance.",
             "Predictions.", "V1Predictions", refusals=REFUSALS, body="V1Request"),
    Endpoint("/v1/models/{name}:explain", "POST", explain, "KServe V1 explain: a heatmap per instance.",
             "Explanations.", "V1Explanations", refusals=REFUSALS, body="V1Request"),
), SCHEMAS)
