"""What keeps one request from taking the server down: admission (the app's own 503 before uvicorn's), a
deadline on reading the body (408), checks before queueing (pixels from the image header, forwards from the
method's cost: 413), and a deadline on the work (504) whose token, like a client that leaves, cancels the
work between batches.

Every protocol uses the same calls: `read_request_within(request, config)` for the body, then
`await run_job(ctx, request, job)` for a PredictJob or ExplainJob (it checks, queues, waits and cancels).
`app._guarded` admits POST requests through `Admission` and turns the refusals into JSON answers.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from ..limits import CancelToken
from .requests import HTTPError, read_body, read_request

if TYPE_CHECKING:
    from starlette.requests import Request

    from .config import ServeConfig
    from .routes import Context

RETRY_AFTER = {"Retry-After": "1"}


class Admission:
    """Counts the model requests the app holds (reading a body, queued or running); 503 past `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.inflight = 0

    @contextlib.contextmanager
    def admit(self):
        if self.inflight >= self.limit:
            raise HTTPError(503, f"The server is busy ({self.inflight} requests in progress); retry shortly.",
                            RETRY_AFTER)
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


async def read_request_within(request: "Request", config: "ServeConfig") -> tuple[dict, bytes]:
    """`read_request`, refused with 408 when the client has not sent the whole body within body_timeout."""
    return await _within_body_timeout(read_request(request, config.max_body), config)


async def read_body_within(request: "Request", config: "ServeConfig") -> bytes:
    """The raw body (at most max_body bytes), refused with 408 when it has not arrived within body_timeout."""
    return await _within_body_timeout(read_body(request, config.max_body), config)


async def _within_body_timeout(reading: Any, config: "ServeConfig") -> Any:
    try:
        return await asyncio.wait_for(reading, config.body_timeout)
    except asyncio.TimeoutError:
        raise HTTPError(408, f"The request body did not arrive within {config.body_timeout:g} s; send the whole "
                             "body at once.") from None


async def run_job(ctx: "Context", request: "Request", job: Any) -> Any:
    """Check `job` (ctx.service.check: names, pixels, forwards), queue it, and wait for its result at most
    config.timeout seconds; a deadline that passes (504) or a client that leaves cancels the work between
    batches."""
    ctx.service.check(job)
    token = CancelToken(ctx.config.timeout)
    work = asyncio.ensure_future(ctx.batcher.submit(job.key(), job, token))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=token.remaining(), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if work in done:
        return work.result()
    work.cancel()
    if gone in done:
        token.cancel("The client left before its answer was ready.")
        raise HTTPError(499, "The client closed the connection; its work was cancelled.")
    token.cancel(f"The request ran past the server's limit of {ctx.config.timeout:g} s.")
    raise HTTPError(504, f"The request ran past the server's limit of {ctx.config.timeout:g} s and was cancelled; "
                         "ask for less work (fewer forwards, a smaller image) or raise --timeout.")


async def _disconnected(request: "Request") -> None:
    """Returns once the client has closed the connection (the body is already read)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return
