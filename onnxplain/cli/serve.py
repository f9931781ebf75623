"""`onnxplain serve`: one model over HTTP (the app itself is onnxplain.serve)."""
from __future__ import annotations

import click

from .common import HELP, Command, ModelOptions, model_options


@click.command("serve", cls=Command, context_settings=HELP)
@click.argument("model", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (default: this machine only).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1, 1024),
              help="Requests run as one forward at most.")
@click.option("--max-body", default=16 * 2**20, show_default=True, type=click.IntRange(1, None),
              help="Largest request body in bytes (413 beyond).")
@click.option("--queue-size", default=64, show_default=True, type=click.IntRange(1, None),
              help="Requests waiting for the model at most (503 beyond).")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 256),
              help="Threads running model work.")
@click.option("--batch-wait-ms", default=5.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long a request waits for others to batch with.")
@click.option("--name", default=None, help="The model's name in KServe V1 / V2 paths (default: the file's stem).")
@click.option("--token", default=None, help="Require 'Authorization: Bearer TOKEN' on every route but health, "
                                            "readiness and ping (default: $ONNXPLAIN_TOKEN; none when unset).")
@click.option("--warmup", default="", metavar="METHODS",
              help="Comma-separated methods to run once before the server reports ready (e.g. grad-cam builds "
                   "the torch module).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0.1, None),
              help="Seconds a request may take in all (504 beyond; its work is cancelled between batches).")
@click.option("--body-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, None),
              help="Seconds a client may take to send its request body (408 beyond).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1, None),
              help="Seconds a client may take to send a request head (the connection is closed beyond).")
@click.option("--keep-alive", default=5, show_default=True, type=click.IntRange(1, 600),
              help="Seconds an idle keep-alive connection stays open.")
@model_options()
def serve_command(model: str, host: str, port: int, max_batch: int, max_body: int, queue_size: int, workers: int,
                  batch_wait_ms: float, name: str | None, token: str | None, warmup: str, timeout: float,
                  body_timeout: float, header_timeout: float, keep_alive: int, models: ModelOptions) -> None:
    """Serve MODEL over HTTP: /predict, /explain, KServe V1 (/v1), Open Inference Protocol V2 (/v2), /metrics,
    /readyz (OpenAPI at /openapi.json)."""
    from ..errors import UserError
    try:
        import uvicorn
    except ImportError:
        raise UserError("The server needs starlette, uvicorn and python-multipart; install them with pip.") from None
    from ..serve import LOOPBACK, create_app
    from ..serve.auth import token_from

    token = token_from(token)
    explainer = models.explainer(model, quiet=True)
    app = create_app(explainer, max_batch=max_batch, max_body=max_body, queue_size=queue_size, workers=workers,
                     batch_wait=batch_wait_ms / 1000, name=name, token=token,
                     timeout=timeout, body_timeout=body_timeout, header_timeout=header_timeout,
                     warmup=tuple(m.strip() for m in warmup.split(",") if m.strip()))
    if host not in LOOPBACK and token is None:
        click.echo(f"warning: binding {host}: the server has no token (--token); anyone who reaches it can use it.",
                   err=True)
    uvicorn.run(app, host=host, port=port, log_level="info", **uvicorn_settings(app, keep_alive))


def uvicorn_settings(app, keep_alive: int = 5) -> dict:
    """uvicorn's own limits, set around the app's: its plain-text 503 (limit_concurrency, which also counts
    idle connections) only trips well above the app's JSON 503 (config.max_inflight), so /health and the
    app's answers come first; idle keep-alive connections close after `keep_alive` s; request heads are
    bounded in bytes (h11_max_incomplete_event_size, h11 forced) and in time (config.header_timeout, closed,
    logged and counted in the app's metrics); slow bodies are the app's 408 (config.body_timeout)."""
    from ..serve.connection import header_timeout_protocol
    config = app.state.config
    return {"limit_concurrency": config.max_inflight + HEADROOM, "timeout_keep_alive": keep_alive,
            "http": header_timeout_protocol(config.header_timeout, app.state.serve.metrics.header_timeouts),
            "h11_max_incomplete_event_size": MAX_HEAD, "timeout_graceful_shutdown": 5}


MAX_HEAD = 64 * 1024  # bytes of one request head (line and headers); uvicorn answers 400 beyond
HEADROOM = 128  # connections beyond the app's in-flight limit: /health, idle keep-alives, refusals being sent
