"""A `kserve.Model` around one Explainer: V1 `:predict` / `:explain` with `{"b64": ...}` instances, and V2 infer
(Open Inference Protocol) with one BYTES input of encoded images, for `kserve.ModelServer` or any KServe runtime.

    from onnxplain.integrations.kserve import ExplainerModel
    kserve.ModelServer().start([ExplainerModel("effnet", "model.onnx")])

A request's fields (top, method, target, layer, ...) go in the V1 body's `parameters`, or the V2 request's
`parameters` (method, target, layer, output, probability, params: the answer then adds the outputs `map` and
`target`, as `onnxplain serve`'s /v2 does). A user error (a bad image, an unknown method) becomes kserve's
InvalidInput (HTTP 400).
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Any

import kserve
from kserve.errors import InvalidInput

from ..errors import UserError
from ..serve import v2
from ..serve.config import ServeConfig
from ..serve.requests import EXPLAIN, PREDICT, HTTPError, RequestModel


class ExplainerModel(kserve.Model):
    """Predictions and explanations of one ONNX image model, served by KServe."""

    def __init__(self, name: str, model_path: str, **options: Any):
        super().__init__(name)
        self.model_path, self.options = model_path, options
        self.service = None
        self.config = ServeConfig()

    def load(self) -> bool:
        """Load the model (sessions built and warmed by one prediction); KServe serves it once ready."""
        import onnxplain
        from ..serve.batcher import Service
        from ..serve.readiness import Readiness

        self.service = Service(onnxplain.load(self.model_path, quiet=True, **self.options))
        Readiness(self.service).warm()
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        """V2 metadata: one BYTES input of encoded image files."""
        return v2.INPUTS

    def get_output_types(self) -> list[dict]:
        """V2 metadata: the model's outputs, then `map` and `target` (answered when a method is named)."""
        return v2.output_metadata(self.service.explainer) if self.service else []

    def _jobs(self, fields: dict, images: list[bytes], model: RequestModel) -> list:
        try:
            jobs = [model.parse(fields, image, self.config) for image in images]
            if jobs:
                self.service.check(jobs[0])
        except HTTPError as exc:
            raise InvalidInput(exc.message) from None
        except UserError as exc:
            raise InvalidInput(str(exc)) from None
        return jobs

    async def _run(self, jobs: list) -> list[dict]:
        """The jobs as one batch in a worker thread (the event loop keeps serving)."""
        try:
            return await asyncio.to_thread(self.service.run, jobs[0].key(), jobs) if jobs else []
        except UserError as exc:
            raise InvalidInput(str(exc)) from None

    async def _v1(self, payload: Any, model: RequestModel) -> list[dict]:
        from ..serve.kserve_v1 import instance_bytes
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('The body needs "instances": a list of images as {"b64": "..."}.')
        try:
            images = [instance_bytes(i) for i in payload["instances"]]
        except HTTPError as exc:
            raise InvalidInput(exc.message) from None
        return await self._run(self._jobs(payload.get("parameters") or {}, images, model))

    async def predict(self, payload, headers: dict | None = None, response_headers: dict | None = None):
        """V1: {"predictions": top-k classes per instance}; V2 (an InferRequest): the model output, and the maps
        as outputs `map` and `target` when the request parameters name a method."""
        if isinstance(payload, kserve.InferRequest):
            return await self._infer(payload)
        return {"predictions": [r["top"] for r in await self._v1(payload, PREDICT)]}

    async def explain(self, payload: dict, headers: dict | None = None) -> dict:
        """V1: {"explanations": an /explain answer per instance (overlay PNG, classes, raw map with raw: true)}."""
        return {"explanations": await self._v1(payload, EXPLAIN)}

    async def _infer(self, request: kserve.InferRequest) -> kserve.InferResponse:
        try:
            fields = v2.explain_fields(infer_parameters(request.parameters))
            images = infer_images(request)
        except HTTPError as exc:
            raise InvalidInput(exc.message) from None
        model, job_fields = v2.job_fields(fields, self.config.max_top)
        results = await self._run(self._jobs(job_fields, images, model))
        wanted = [o.name for o in request.request_outputs or []]
        outputs = [infer_output(*entry) for entry in v2.output_arrays(self.service.explainer, fields, results)
                   if not wanted or entry[0] in wanted]
        return kserve.InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name,
                                    infer_outputs=outputs, use_binary_outputs=request.use_binary_outputs,
                                    requested_outputs=request.request_outputs)


def infer_parameters(parameters: Any) -> dict | None:
    """Request parameters as a dict (gRPC gives InferParameter messages: their set value)."""
    if parameters is None or isinstance(parameters, dict):
        return parameters
    return {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in parameters.items()}


def infer_images(request: kserve.InferRequest) -> list[bytes]:
    """The encoded images of the one BYTES input: str elements are base64 (JSON), bytes are the file (gRPC)."""
    if len(request.inputs) != 1 or request.inputs[0].datatype != "BYTES":
        raise HTTPError(400, "The request needs one input of datatype BYTES (encoded image files).")
    try:
        elements = request.inputs[0].as_numpy().ravel().tolist()
    except ValueError:
        raise HTTPError(400, f"The input's shape {request.inputs[0].shape} does not match its data.") from None
    if not elements:
        raise HTTPError(400, "The BYTES input holds no image.")
    return [bytes(e) if isinstance(e, (bytes, bytearray)) else v2.base64_element(e) for e in elements]


def infer_output(name: str, datatype: str, array) -> kserve.InferOutput:
    output = kserve.InferOutput(name, list(array.shape), datatype)
    output.set_data_from_numpy(array, binary_data=False)
    return output
