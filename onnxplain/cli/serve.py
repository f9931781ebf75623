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
@model_options()
def serve_command(model: str, host: str, port: int, max_batch: int, max_body: int, queue_size: int, workers: int,
                  batch_wait_ms: float, name: str | None, token: str | None, warmup: str,
                  models: ModelOptions) -> None:
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
                     warmup=tuple(m.strip() for m in warmup.split(",") if m.strip()))
    if host not in LOOPBACK and token is None:
        click.echo(f"warning: binding {host}: the server has no token (--token); anyone who reaches it can use it.",
                   err=True)
    # uvicorn answers 503 past this many open requests, so request bodies in memory stay bounded too
    limit = queue_size + workers * max_batch + 16
    uvicorn.run(app, host=host, port=port, limit_concurrency=limit, timeout_graceful_shutdown=5,
                log_level="info")
