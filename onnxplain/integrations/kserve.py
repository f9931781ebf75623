"""A `kserve.Model` around one Explainer: V1 `:predict` / `:explain` with `{"b64": ...}` instances, for
`kserve.ModelServer` or any KServe runtime (V2 infer with maps: `onnxplain serve`, /v2).

    from onnxplain.integrations.kserve import ExplainerModel
    kserve.ModelServer().start([ExplainerModel("effnet", "model.onnx")])

A request's fields (top, method, target, layer, ...) go in the V1 body's `parameters`; a user error (a bad image,
an unknown method) becomes kserve's InvalidInput (HTTP 400).
"""
from __future__ import annotations

from typing import Any

import kserve
from kserve.errors import InvalidInput

from ..errors import UserError
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

    def _jobs(self, payload: dict, model: RequestModel) -> list:
        from ..serve.kserve_v1 import instance_bytes
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('The body needs "instances": a list of images as {"b64": "..."}.')
        fields = payload.get("parameters") or {}
        try:
            jobs = [model.parse(fields, instance_bytes(i), self.config) for i in payload["instances"]]
            if jobs:
                self.service.check(jobs[0])
        except HTTPError as exc:
            raise InvalidInput(exc.message) from None
        except UserError as exc:
            raise InvalidInput(str(exc)) from None
        return jobs

    def _run(self, jobs: list) -> list[dict]:
        try:
            return self.service.run(jobs[0].key(), jobs) if jobs else []
        except UserError as exc:
            raise InvalidInput(str(exc)) from None

    async def predict(self, payload, headers: dict | None = None, response_headers: dict | None = None):
        """V1: {"predictions": top-k classes per instance} (for V2, with maps as outputs, use `onnxplain serve`)."""
        if isinstance(payload, kserve.InferRequest):
            raise InvalidInput("This KServe model takes V1 requests; for V2 infer use `onnxplain serve` (/v2).")
        return {"predictions": [r["top"] for r in self._run(self._jobs(payload, PREDICT))]}

    async def explain(self, payload: dict, headers: dict | None = None) -> dict:
        """V1: {"explanations": an /explain answer per instance (overlay PNG, classes, raw map with raw: true)}."""
        return {"explanations": self._run(self._jobs(payload, EXPLAIN))}
