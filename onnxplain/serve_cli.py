"""The `onnxplain serve` command (the CLI package takes it as onnxplain/cli/serve.py)."""
from __future__ import annotations

import click

from .errors import UserError
from .serve import LOOPBACK, create_app, warm_up


@click.command("serve")
@click.argument("model", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (default: this machine only).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--preset", default=None, help="Preprocessing preset (default: model metadata or imagenet).")
@click.option("--labels", type=click.Path(), default=None, help="Class names, one per line.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
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
def serve_command(model: str, host: str, port: int, preset: str | None, labels: str | None, device: str,
                  max_batch: int, max_body: int, queue_size: int, workers: int, batch_wait_ms: float) -> None:
    """Serve MODEL over HTTP: /health, /model, /predict, /explain (OpenAPI at /openapi.json)."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("The server needs starlette, uvicorn and python-multipart; install them with pip.") from None
    from .explainer import Explainer

    explainer = Explainer(model, preprocess=preset, labels=labels, device=device, quiet=True)
    app = create_app(explainer, max_batch=max_batch, max_body=max_body, queue_size=queue_size, workers=workers,
                     batch_wait=batch_wait_ms / 1000)
    warm_up(explainer)
    if host not in LOOPBACK:
        click.echo(f"warning: binding {host}: the server has no authentication; anyone who reaches it can use it.",
                   err=True)
    # uvicorn answers 503 past this many open requests, so request bodies in memory stay bounded too
    limit = queue_size + workers * max_batch + 16
    uvicorn.run(app, host=host, port=port, limit_concurrency=limit, timeout_graceful_shutdown=5,
                log_level="info")
