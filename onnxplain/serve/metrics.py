"""Prometheus metrics of one app (its own CollectorRegistry, so several apps share a process) and GET /metrics.

Requests and latency by route and HTTP verb, refusals by reason, connections closed at the header timeout, the
queue length and jobs running, the sizes of the batches the model ran and the model time by job kind and
explanation method.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from .routes import Endpoint, Protocol

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .batcher import Batcher
    from .routes import Context

# status -> the reason a refusal is counted under
REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 408: "timeout", 413: "too_large",
           415: "unsupported_media_type", 422: "invalid", 429: "too_many", 500: "error", 503: "unavailable",
           504: "timeout"}
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The app's collectors; `observe` records one answered request, `batches` wraps the batcher's run."""

    def __init__(self, batcher: "Batcher"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("onnxplain_requests", "Requests answered, by route, HTTP verb and status.",
                                ["route", "verb", "status"], registry=registry)
        self.latency = Histogram("onnxplain_request_seconds", "Time to answer a request, by route and HTTP verb.",
                                 ["route", "verb"], buckets=SECONDS, registry=registry)
        self.refusals = Counter("onnxplain_refusals", "Requests refused, by route and reason.",
                                ["route", "reason"], registry=registry)
        self.batch_size = Histogram("onnxplain_batch_size", "Jobs per model call, by job kind and method.",
                                    ["kind", "method"], buckets=BATCHES, registry=registry)
        self.model_time = Histogram("onnxplain_model_seconds", "Time of one model call, by job kind and method.",
                                    ["kind", "method"], buckets=SECONDS, registry=registry)
        self.header_timeouts = Counter("onnxplain_header_timeouts", "Connections closed because their request head "
                                       "was not complete within --header-timeout.", registry=registry)
        Gauge("onnxplain_queue_length", "Requests waiting for a worker.",
              registry=registry).set_function(lambda: batcher.queued)
        Gauge("onnxplain_running_jobs", "Jobs being computed now.",
              registry=registry).set_function(lambda: batcher.running)

    def observe(self, endpoint: Endpoint, status: int, seconds: float) -> None:
        """Count one answer of `endpoint`; a 4xx/5xx answer is also a refusal under its reason."""
        self.requests.labels(endpoint.path, endpoint.method, str(status)).inc()
        self.latency.labels(endpoint.path, endpoint.method).observe(seconds)
        if status >= 400:
            self.refusals.labels(endpoint.path, REASONS.get(status, str(status))).inc()

    def batches(self, run: Callable[[tuple, list], list]) -> Callable[[tuple, list], list]:
        """`run(key, jobs)` that also records the batch size and model time under the key's kind and method."""
        def observed(key: tuple, jobs: list) -> list:
            kind, method = key[0], key[1] if key[0] == "explain" else ""
            start = time.perf_counter()
            try:
                return run(key, jobs)
            finally:
                self.batch_size.labels(kind, method).observe(len(jobs))
                self.model_time.labels(kind, method).observe(time.perf_counter() - start)
        return observed

    def exposition(self) -> tuple[bytes, str]:
        """The text format Prometheus scrapes, and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


async def metrics(ctx: "Context", request: "Request") -> "Response":
    from starlette.responses import Response
    body, kind = ctx.state.metrics.exposition()
    return Response(body, 200, media_type=kind.split(";")[0], headers={"Content-Type": kind})


METRICS = Protocol("metrics", (
    Endpoint("/metrics", "GET", metrics, "Prometheus metrics: requests, latency, refusals, queue, batch sizes.",
             "The metrics in Prometheus text format."),
))
