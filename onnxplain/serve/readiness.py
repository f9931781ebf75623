"""Ready only after warm-up: a background thread runs one prediction and one explanation per warm-up method
(building the torch module for gradient methods), and GET /readyz and /ping answer for probes.

The warm-up starts with the app's lifespan, or on the first readiness probe when the app is mounted into a host
app whose lifespan does not reach it.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Sequence

from .routes import Endpoint, Protocol, error_response, json_response

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .batcher import Service
    from .routes import Context

log = logging.getLogger("onnxplain.serve")


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The warm-up methods, each checked to exist (UserError naming the unknown one)."""
    from .. import methods as registry
    for name in methods:
        registry.get(name)
    return tuple(methods)


def blank_png() -> bytes:
    """A small grey PNG: the warm-up image."""
    import cv2
    import numpy as np
    return cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))[1].tobytes()


class Readiness:
    """Whether the app finished warming up; `start` runs the warm-up once, in a daemon thread."""

    def __init__(self, service: "Service", methods: Sequence[str] = ()):
        self.service = service
        self.methods = check_methods(methods)
        self.done = threading.Event()
        self.error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        return self.done.is_set() and self.error is None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self.warm, name="onnxplain-warmup", daemon=True)
                self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Start the warm-up if needed and wait for it; whether the app is ready."""
        self.start()
        self.done.wait(timeout)
        return self.ready

    def warm(self) -> None:
        """One prediction, then one explanation per warm-up method, on a blank image."""
        from .requests import ExplainJob, PredictJob
        try:
            png = blank_png()
            self.service.predict([PredictJob(png)])
            for method in self.methods:
                self.service.explain([ExplainJob(png, method)])
        except Exception as exc:  # the app stays unready and says why
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("warm-up failed: %s", self.error)
        finally:
            self.done.set()

    def refusal(self) -> str:
        if self.error:
            return f"The model failed to warm up ({self.error.rstrip('.')}); see the server log."
        return "The model is warming up; retry shortly."


async def readyz(ctx: "Context", request: "Request") -> "Response":
    readiness = ctx.state.readiness
    readiness.start()
    if not readiness.ready:
        return error_response(503, readiness.refusal(), {"Retry-After": "1"})
    return json_response({"ready": True, "warmed": list(readiness.methods)})


async def ping(ctx: "Context", request: "Request") -> "Response":
    return json_response({"ping": "pong"})


READINESS = Protocol("readiness", (
    Endpoint("/readyz", "GET", readyz, "Ready once warm-up (a prediction and the --warmup methods) has run.",
             "Ready.", refusals=(503,)),
    Endpoint("/ping", "GET", ping, "Liveness for load balancers.", "Alive."),
))
