"""HTTP server around one loaded Explainer: /health, /model, /predict, /explain and /openapi.json.

`create_app(explainer)` returns a Starlette (ASGI) app to run under uvicorn or mount into another ASGI app
(app.py). One Explainer and its onnxruntime sessions serve every request. Model work runs in a bounded thread
pool, fed by a micro-batcher whose bounded queue answers 503 when full (batcher.py). Requests carry image bytes
only: the server never opens a path that a request names (requests.py). The OpenAPI document is generated from
the request models and the routes (openapi.py); a protocol adds its routes as a routes.Protocol.
"""
from __future__ import annotations

from .app import NATIVE, PROTOCOLS, create_app, model_info, openapi_schema, warm_up
from .batcher import Batcher, Service
from .config import LOOPBACK, ServeConfig
from .requests import (EXPLAIN, EXPLAIN_FIELDS, PREDICT, PREDICT_FIELDS, ExplainJob, Field, HTTPError, PredictJob,
                       RequestModel, explain_job, predict_job, read_body, read_request)
from .routes import Context, Endpoint, Protocol

__all__ = ["Batcher", "Context", "EXPLAIN", "EXPLAIN_FIELDS", "Endpoint", "ExplainJob", "Field", "HTTPError",
           "LOOPBACK", "NATIVE", "PREDICT", "PREDICT_FIELDS", "PROTOCOLS", "PredictJob", "Protocol", "RequestModel",
           "ServeConfig", "Service", "create_app", "explain_job", "model_info", "openapi_schema", "predict_job",
           "read_body", "read_request", "warm_up"]
