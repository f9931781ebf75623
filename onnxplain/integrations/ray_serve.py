"""A Ray Serve deployment around one Explainer: POST /predict and /explain as `onnxplain serve` answers them,
with `@serve.batch` collecting concurrent requests into one Explainer call.

    from ray import serve
    from onnxplain.integrations.ray_serve import app
    serve.run(app("model.onnx", max_batch_size=8), route_prefix="/effnet")

or from the command line: `serve run onnxplain.integrations.ray_serve:build model_path=model.onnx`.

The Explainer (onnxruntime sessions, which do not pickle) is built inside each replica. Bodies are those of
`onnxplain serve`: JSON with the image in base64 under "image" (or multipart, or a raw image/* body) and the
fields of /predict or /explain; refusals are {"error": sentence} (a user error, such as an image that does not
decode or an unknown method, is 400). GET /health answers the batch sizes run so far.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from ray import serve

from ..errors import UserError
from ..serve.config import ServeConfig
from ..serve.requests import EXPLAIN, PREDICT, HTTPError, read_request
from ..serve.routes import error_response, json_response

if TYPE_CHECKING:
    from ray.serve import Application
    from starlette.requests import Request
    from starlette.responses import Response

ROUTES = {"/predict": PREDICT, "/explain": EXPLAIN}


def run_grouped(service: Any, jobs: list) -> list:
    """Each group of jobs with equal keys as one Service call; a group refused by a UserError is run job by
    job, so each request gets its own answer. One result or UserError per job."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.key(), []).append(i)
    results: list = [None] * len(jobs)
    for key, index in groups.items():
        try:
            values = service.run(key, [jobs[i] for i in index])
        except UserError as exc:
            if len(index) == 1:
                values = [exc]
            else:
                values = [run_grouped(service, [jobs[i]])[0] for i in index]
        for i, value in zip(index, values):
            results[i] = value
    return results


@serve.deployment
class ExplainerDeployment:
    """One Explainer per replica; concurrent requests are batched into one Explainer call by `@serve.batch`."""

    def __init__(self, model_path: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 **options: Any):
        import onnxplain
        from ..serve.batcher import Service
        from ..serve.readiness import Readiness

        self.service = Service(onnxplain.load(model_path, quiet=True, **options))
        Readiness(self.service).warm()  # sessions built before the replica takes traffic
        self.config = ServeConfig()
        self.batch_sizes: Counter = Counter()
        self.run_batch.set_max_batch_size(max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch
    async def run_batch(self, jobs: list) -> list:
        """The jobs of concurrent requests, run in a worker thread (the replica keeps accepting requests)."""
        self.batch_sizes[len(jobs)] += 1
        return await asyncio.to_thread(run_grouped, self.service, jobs)

    async def __call__(self, request: "Request") -> "Response":
        path = "/" + request.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            if request.method == "GET" and path == "/health":
                return json_response({"status": "ok", "batch_sizes": dict(sorted(self.batch_sizes.items()))})
            if request.method != "POST" or path not in ROUTES:
                raise HTTPError(404, "This deployment answers POST /predict, POST /explain and GET /health.")
            fields, image = await read_request(request, self.config.max_body)
            job = ROUTES[path].parse(fields, image, self.config)
            self.service.check(job)
            result = await self.run_batch(job)
            if isinstance(result, UserError):
                raise result
            return json_response(result)
        except HTTPError as exc:
            return error_response(exc.status, exc.message)
        except UserError as exc:
            return error_response(400, str(exc))


def app(model_path: str, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
        num_cpus: float = 1, **options: Any) -> "Application":
    """The deployment bound to a model; `options` go to onnxplain.load (device, engine, ...)."""
    deployment = ExplainerDeployment.options(ray_actor_options={"num_cpus": num_cpus},
                                             max_ongoing_requests=max(2 * max_batch_size, 5))
    return deployment.bind(model_path, max_batch_size=max_batch_size,
                           batch_wait_timeout_s=batch_wait_timeout_s, **options)


def build(args: dict) -> "Application":
    """The application builder of `serve run onnxplain.integrations.ray_serve:build model_path=... [key=value]`."""
    args = dict(args)
    if "model_path" not in args:
        raise UserError("Give the model: serve run onnxplain.integrations.ray_serve:build model_path=MODEL.onnx.")
    numbers = {"max_batch_size": int, "batch_wait_timeout_s": float, "num_cpus": float}
    return app(args.pop("model_path"), **{k: numbers.get(k, str)(v) for k, v in args.items()})
