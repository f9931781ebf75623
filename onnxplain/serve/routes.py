"""What a protocol adds to the app: its endpoints (path, verb, handler, documentation) and response schemas.

The app serves, and openapi.py documents, exactly the endpoints of `app.PROTOCOLS`; a new protocol (KServe V1,
Open Inference Protocol V2, /metrics) is a module that builds a `Protocol` and is added to that tuple.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from ..explainer import Explainer
    from .batcher import Batcher, Service
    from .config import ServeConfig
    from .requests import RequestModel


@dataclass(frozen=True)
class Context:
    """What a handler may use: the shared explainer, the app's limits, the batcher and service, the model's
    description (GET /model) and the protocols the app serves."""
    explainer: "Explainer"
    config: "ServeConfig"
    batcher: "Batcher"
    service: "Service"
    info: dict
    protocols: tuple["Protocol", ...]
    state: Any = None                    # state.ServeState: model name, readiness, metrics, token


Handler = Callable[[Context, "Request"], Awaitable["Response"]]


@dataclass(frozen=True)
class Endpoint:
    """One route: `handler(context, request)` answers `method` on `path`; the rest documents it.

    A handler raises HTTPError or UserError to refuse (the app answers {"error": sentence}).
    """
    path: str
    method: str                          # GET | POST
    handler: Handler
    summary: str
    answer: str                          # what a 200 answer holds
    schema: str | None = None            # the answer's schema in `Protocol.schemas`
    request: "RequestModel | None" = None
    refusals: tuple[int, ...] = ()       # error statuses it documents (descriptions in openapi.REFUSALS)
    body: str | None = None              # a JSON request body's schema in `Protocol.schemas` (instead of request)


@dataclass(frozen=True)
class Protocol:
    """A family of endpoints served and documented together, with the response schemas they name."""
    name: str
    endpoints: tuple[Endpoint, ...]
    schemas: Mapping[str, dict] = field(default_factory=dict)


def json_response(data: object, status: int = 200, headers: dict | None = None) -> "Response":
    """`data` as strictly valid JSON (NaN and infinity as null, other values JSON cannot hold as text)."""
    from starlette.responses import Response

    from ..writing import dumps
    return Response(dumps(data), status, headers, media_type="application/json")


def error_response(status: int, message: str, headers: dict | None = None) -> "Response":
    """A refusal: {"error": one sentence}."""
    return json_response({"error": message}, status, headers)
