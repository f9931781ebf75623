"""What the standard protocols add to one app: its model name, readiness, metrics and optional bearer token,
and `wrap`, which puts the token check and the metrics around every route's handler."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from .auth import PUBLIC, UNAUTHORIZED, authorized
from .metrics import Metrics
from .readiness import Readiness
from .routes import Endpoint, error_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .batcher import Batcher, Service


@dataclass
class ServeState:
    name: str                    # the model's name in KServe V1 and V2 paths
    readiness: Readiness
    metrics: Metrics
    token: str | None = None

    @classmethod
    def create(cls, service: "Service", batcher: "Batcher", name: str | None = None, token: str | None = None,
               warmup: Sequence[str] = ()) -> "ServeState":
        """State for an app; the name defaults to the model file's stem."""
        return cls(name or model_name(service.explainer), Readiness(service, warmup), Metrics(batcher), token)

    def wrap(self, endpoint: Endpoint, handler: Callable) -> Callable:
        """`handler` behind the token check (unless the route is public), counted in the metrics."""
        guarded = self.token is not None and endpoint.path not in PUBLIC

        async def wrapped(request: "Request") -> "Response":
            start, status = time.perf_counter(), 500
            try:
                if guarded and not authorized(request.headers.get("authorization"), self.token):
                    response = error_response(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
                else:
                    response = await handler(request)
                status = response.status_code
                return response
            finally:
                self.metrics.observe(endpoint, status, time.perf_counter() - start)
        return wrapped


def model_name(explainer) -> str:
    """The model's serving name: its file's stem (e.g. efficientnet-lite0), or 'model'."""
    from pathlib import Path
    path = getattr(explainer.model, "path", None)
    return Path(str(path)).name.split(".")[0] if path else "model"
