"""The Open Inference Protocol V2 (KServe V2, Triton): server and model metadata, health, readiness and infer.

`POST /v2/models/{name}/infer` takes one BYTES input of encoded images (base64 strings in JSON `data`, or raw
bytes through the binary data extension, as tritonclient and kserve's client send them) and answers the model
output as FP32 [n, classes]. V2 has no explain verb: with request `parameters` naming a `method` (and optional
`target`, `layer`, `output`, `probability`, `params`), the maps come as extra FP32 outputs: `map` [n, k, h, w]
(k targets per image, at the method's resolution) and `target` INT64 [n, k] (the class each map explains).
Refusals are the protocol's `{"error": sentence}`.
"""
from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from .kserve_v1 import check_name, run_jobs
from .guard import read_body_within
from .requests import EXPLAIN, PREDICT, HTTPError, RequestModel
from .routes import Endpoint, Protocol, error_response, json_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .routes import Context

HEADER = "inference-header-content-length"
EXPLAIN_PARAMETERS = ("method", "target", "layer", "output", "probability", "params")


# ---- reading an infer request ----------------------------------------------------------------
def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary tail of an infer body (the binary data extension when the header says so)."""
    if header_length is None:
        head, tail = body, b""
    elif header_length.isdigit() and int(header_length) <= len(body):
        head, tail = body[:int(header_length)], body[int(header_length):]
    else:
        raise HTTPError(400, f"Header Inference-Header-Content-Length is {header_length!r}, not a length within "
                             "the body.")
    try:
        request = json.loads(head)
    except ValueError:
        raise HTTPError(422, "The infer request is not valid JSON.") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or len(request["inputs"]) != 1:
        raise HTTPError(422, 'The infer request needs "inputs" with one BYTES tensor of encoded images.')
    return request, tail


def _flat(data: Any) -> list:
    return [x for item in data for x in _flat(item)] if isinstance(data, list) else [data]


def base64_element(item: Any) -> bytes:
    """One encoded image from JSON data: base64 text, or a list of byte values."""
    if isinstance(item, str):
        try:
            return base64.b64decode("".join(item.split()), validate=True)
        except (binascii.Error, ValueError):
            raise HTTPError(400, "A BYTES element is not base64; send each encoded image in base64, or as raw "
                                 "bytes with the binary data extension.") from None
    raise HTTPError(400, "Each BYTES element must be an encoded image in base64.")


def _binary_elements(tail: bytes) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then the bytes."""
    images, at = [], 0
    while at < len(tail):
        if at + 4 > len(tail):
            raise HTTPError(400, "The binary BYTES tensor is truncated.")
        (size,) = struct.unpack_from("<I", tail, at)
        if at + 4 + size > len(tail):
            raise HTTPError(400, "The binary BYTES tensor is truncated.")
        images.append(tail[at + 4:at + 4 + size])
        at += 4 + size
    return images


def input_images(request: dict, tail: bytes) -> list[bytes]:
    """The encoded images of the one BYTES input; 400 for another datatype or a shape that does not match."""
    tensor = request["inputs"][0]
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise HTTPError(400, "The input must have datatype BYTES (encoded image files).")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size > len(tail):
            raise HTTPError(400, "The input's binary_data_size is larger than the binary data sent.")
        images = _binary_elements(tail[:size])
    elif isinstance(tensor.get("data"), list):
        images = [base64_element(item) for item in _flat(tensor["data"])]
    else:
        raise HTTPError(400, "The input has no 'data'; send the images in base64, or as binary data.")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or int(np.prod(shape)) != len(images) or not images:
        raise HTTPError(400, f"The input's shape {shape} does not match its {len(images)} images.")
    return images


def explain_fields(parameters: Any) -> dict:
    """The /explain fields among the request parameters (unknown ones, e.g. binary_data_output, ignored)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise HTTPError(400, "The request 'parameters' must be an object.")
    return {k: v for k, v in parameters.items() if k in EXPLAIN_PARAMETERS}


# ---- building the answer -----------------------------------------------------------------------
def tensor(name: str, datatype: str, array: np.ndarray) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def scores(top: list[list[dict]]) -> np.ndarray:
    """[n, classes] scores back from each image's full top list."""
    out = np.zeros((len(top), max(len(t) for t in top)), np.float32)
    for row, classes in zip(out, top):
        for c in classes:
            row[c["index"]] = c["score"]
    return out


def output_arrays(explainer: Any, fields: dict, results: list[dict]) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, array) of the answer: the model output, and with a method the maps and their classes."""
    name = explainer.output_name(fields.get("output"))
    top = [r["top"] if "top" in r else r["predictions"] for r in results]
    answer = [(name, "FP32", scores(top))]
    if "method" in fields:
        maps = np.array([[e["raw"] for e in r["explanations"]] for r in results], np.float32)
        classes = np.array([[e["target"].get("index", -1) for e in r["explanations"]] for r in results], np.int64)
        answer += [("map", "FP32", maps), ("target", "INT64", classes)]
    return answer


def outputs(ctx: "Context", fields: dict, results: list[dict]) -> list[dict]:
    """The answer's tensors as JSON."""
    return [tensor(*entry) for entry in output_arrays(ctx.explainer, fields, results)]


def job_fields(fields: dict, max_top: int) -> tuple[RequestModel, dict]:
    """The request model and fields of the jobs an infer request becomes: full scores, raw maps with a method."""
    top = {"top": max_top}
    if "method" in fields:
        return EXPLAIN, {**fields, **top, "raw": True}
    return PREDICT, {**{k: v for k, v in fields.items() if k == "output"}, **top}


INPUTS = [{"name": "image", "datatype": "BYTES", "shape": [-1]}]


def output_metadata(explainer: Any) -> list[dict]:
    """The V2 metadata of the outputs: the model's, then map and target (answered when a method is named)."""
    return ([{"name": o.name, "datatype": "FP32", "shape": [-1, -1]} for o in explainer.model.outputs]
            + [{"name": "map", "datatype": "FP32", "shape": [-1, -1, -1, -1]},
               {"name": "target", "datatype": "INT64", "shape": [-1, -1]}])


# ---- the routes -----------------------------------------------------------------------------------
async def server(ctx: "Context", request: "Request") -> "Response":
    from .. import __version__
    return json_response({"name": "onnxplain", "version": __version__, "extensions": ["binary_tensor_data"]})


async def live(ctx: "Context", request: "Request") -> "Response":
    return json_response({"live": True})


async def ready(ctx: "Context", request: "Request") -> "Response":
    readiness = ctx.state.readiness
    readiness.start()
    if not readiness.ready:
        return error_response(503, readiness.refusal(), {"Retry-After": "1"})
    return json_response({"ready": True})


async def model(ctx: "Context", request: "Request") -> "Response":
    name = check_name(ctx, request)
    return json_response({
        "name": name, "versions": ["1"], "platform": "onnxplain",
        "inputs": INPUTS, "outputs": output_metadata(ctx.explainer),
        "parameters": {"methods": [m["name"] for m in ctx.info["methods"]],
                       "explain_parameters": list(EXPLAIN_PARAMETERS)}})


async def model_ready(ctx: "Context", request: "Request") -> "Response":
    name = check_name(ctx, request)
    if not ctx.state.readiness.ready:
        return error_response(503, ctx.state.readiness.refusal(), {"Retry-After": "1"})
    return json_response({"name": name, "ready": True})


async def infer(ctx: "Context", request: "Request") -> "Response":
    name = check_name(ctx, request)
    body = await read_body_within(request, ctx.config)
    infer_request, tail = split_body(body, request.headers.get(HEADER))
    images = input_images(infer_request, tail)
    fields = explain_fields(infer_request.get("parameters"))
    results = await run_jobs(ctx, request, *job_fields(fields, ctx.config.max_top), images)
    tensors = outputs(ctx, fields, results)
    wanted = [o.get("name") for o in infer_request.get("outputs") or [] if isinstance(o, dict)]
    if wanted:
        tensors = [t for t in tensors if t["name"] in wanted]
    answer = {"model_name": name, "model_version": "1", "outputs": tensors}
    if "id" in infer_request:
        answer["id"] = infer_request["id"]
    return json_response(answer)


TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}, "data": {"type": "array"},
    "parameters": {"type": "object"}}}
SCHEMAS = {
    "V2Tensor": TENSOR,
    "V2InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        "parameters": {"type": "object", "description": "method, target, layer, output, probability, params: "
                                                        "with a method the answer adds outputs map and target."}}},
    "V2InferResponse": {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/V2Tensor"}}}},
}
V2 = Protocol("v2", (
    Endpoint("/v2", "GET", server, "V2 server metadata.", "Server name, version, extensions."),
    Endpoint("/v2/health/live", "GET", live, "V2 liveness.", "Live."),
    Endpoint("/v2/health/ready", "GET", ready, "V2 readiness: ready once warm-up has run.", "Ready.",
             refusals=(503,)),
    Endpoint("/v2/models/{name}", "GET", model, "V2 model metadata: inputs and outputs.", "Metadata.",
             refusals=(404,)),
    Endpoint("/v2/models/{name}/ready", "GET", model_ready, "V2 model readiness.", "Ready.", refusals=(404, 503)),
    Endpoint("/v2/models/{name}/infer", "POST", infer, "V2 infer: scores, and maps when parameters name a method.",
             "The output tensors.", "V2InferResponse", refusals=(400, 404, 413, 422, 503), body="V2InferRequest"),
), SCHEMAS)
