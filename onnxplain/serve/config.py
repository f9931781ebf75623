"""The limits of one app, checked when the app is built."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..limits import Remedy

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# a 413 over max_forwards names the request's fields and the server's flag, not the CLI's -t
REMEDY = Remedy(targets=" (field 'target')", params=" (field 'params')", flags="the server's ")


@dataclass(frozen=True)
class ServeConfig:
    """Limits of one app: batch size, body size, queue length, worker threads and batching window."""
    max_batch: int = 8                 # requests run as one forward at most
    max_body: int = 16 * 2**20         # bytes per request body (413 beyond)
    queue_size: int = 64               # requests waiting for a worker at most (503 beyond)
    workers: int = 2                   # threads running model work (each runs one batch at a time)
    batch_wait: float = 0.005          # seconds a lone request waits for others to batch with
    max_top: int = 1000                # largest `top` a request may ask for
    timeout: float = 60.0              # seconds a request may take in all (504 beyond; its work is cancelled)
    body_timeout: float = 10.0         # seconds a client may take to send its body (408 beyond)
    header_timeout: float = 10.0       # seconds a client may take to send a request head (closed beyond; uvicorn)

    @property
    def max_inflight(self) -> int:
        """Model requests the app holds at once (reading, queued or running); 503 with Retry-After beyond.
        uvicorn's own connection limit is set above this, so the app's JSON answer comes first."""
        return self.queue_size + self.workers * self.max_batch

    def __post_init__(self):
        for name in ("max_batch", "max_body", "queue_size", "workers", "max_top"):
            if getattr(self, name) < 1:
                raise UserError(f"The server setting '{name}' must be at least 1.")
        if self.batch_wait < 0:
            raise UserError("The server setting 'batch_wait' cannot be negative.")
        for name in ("timeout", "body_timeout", "header_timeout"):
            if not getattr(self, name) > 0:
                raise UserError(f"The server setting '{name}' must be a positive number of seconds.")
