"""The micro-batcher and the model work behind it.

`Batcher` collects jobs for a few ms into batches and runs them in a bounded thread pool behind a bounded
queue; `Service` runs a batch of PredictJobs or ExplainJobs on the one shared Explainer, and checks a job
before it is queued.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError
from ..limits import AllCancelled, Cancelled, CancelToken, watching
from .config import REMEDY, ServeConfig
from .requests import ExplainJob, HTTPError, PredictJob

if TYPE_CHECKING:
    from ..explainer import Explainer, Prediction
    from ..methods.base import Attribution


# ---- the micro-batcher -----------------------------------------------------------------------
@dataclass
class _Pending:
    key: tuple
    job: Any
    future: asyncio.Future
    token: CancelToken | None = None  # its deadline, or a client that left, stops the work between batches

    @property
    def live(self) -> bool:
        return not self.future.done() and (self.token is None or self.token.reason is None)


class Batcher:
    """Collects jobs for a few ms into batches of up to `max_batch` and runs each batch in a bounded thread pool.

    At most `queue_size` jobs wait; `submit` raises asyncio.QueueFull beyond that, so memory stays bounded.
    Jobs with equal keys in one batch run as one call `run(key, jobs)`; a group that fails with a UserError
    is retried job by job, so each request gets its own answer.
    """

    def __init__(self, run: Callable[[tuple, list], list], config: ServeConfig):
        self.run = run
        self.config = config
        self.pool = ThreadPoolExecutor(config.workers, thread_name_prefix="onnxplain-serve")
        self.batches = 0   # batches run so far
        self.jobs = 0      # jobs run so far
        self.running = 0   # jobs being computed now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, key: tuple, job: Any, token: CancelToken | None = None) -> Any:
        """The job's result once its batch has run; raises QueueFull at once when the queue is full.

        Work stops between batches once `token` says so (deadline passed, client left); a job whose token
        has tripped before its batch starts is not run.
        """
        self._start()
        future = self._loop.create_future()
        self._queue.put_nowait(_Pending(key, job, future, token))
        return await future

    def close(self) -> None:
        """Stop collecting and let the pool's threads end after their current batch."""
        for task in list(self._tasks):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _start(self) -> None:
        """Queue and collector on the running loop, made on the first request (so any host app works)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._queue = asyncio.Queue(self.config.queue_size)
        self._slots = asyncio.Semaphore(self.config.workers)
        self._spawn(self._collect())

    def _spawn(self, coroutine) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _collect(self) -> None:
        """Wait for a free worker, then take up to max_batch jobs (waiting batch_wait for a short batch)."""
        config = self.config
        while True:
            await self._slots.acquire()
            items = [await self._queue.get()]
            if config.max_batch > 1 and config.batch_wait > 0 and self._queue.qsize() < config.max_batch - 1:
                await asyncio.sleep(config.batch_wait)
            while len(items) < config.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            self._spawn(self._dispatch(items))

    async def _dispatch(self, items: list[_Pending]) -> None:
        live = [p for p in items if p.live]  # a client that left, or a deadline passed: not run
        self.running += len(live)
        try:
            outcomes = await self._loop.run_in_executor(self.pool, self._run_batch,
                                                        [(p.key, p.job, p.token) for p in live])
        except Exception as exc:  # the pool itself failed: every job gets the error
            outcomes = [(None, exc)] * len(live)
        finally:
            self.running -= len(live)
            self._slots.release()
        self.batches += 1
        self.jobs += len(live)
        for pending, (value, error) in zip(live, outcomes):
            if not pending.future.done():
                if error is None:
                    pending.future.set_result(value)
                else:
                    pending.future.set_exception(error)

    def _run_batch(self, jobs: list[tuple[tuple, Any, Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run each group of equal keys as one call (in a worker thread); (result, error) per job."""
        groups: dict[tuple, list[int]] = {}
        for i, (key, _, _) in enumerate(jobs):
            groups.setdefault(key, []).append(i)
        outcomes: list = [None] * len(jobs)
        for key, index in groups.items():
            group = [jobs[i][1] for i in index]
            tokens = [jobs[i][2] for i in index]
            for i, outcome in zip(index, self._run_group(key, group, tokens)):
                outcomes[i] = outcome
        return outcomes

    def _run_group(self, key: tuple, jobs: list, tokens: list) -> list[tuple[Any, BaseException | None]]:
        """The group's results; its work stops between batches once every job's token has tripped."""
        watch = AllCancelled(tokens) if all(t is not None for t in tokens) else None
        try:
            with watching(watch):
                return [(value, None) for value in self.run(key, jobs)]
        except Cancelled as exc:
            return [(None, exc)] * len(jobs)
        except UserError as exc:
            if len(jobs) == 1:
                return [(None, exc)]
            return [self._run_group(key, [job], [token])[0] for job, token in zip(jobs, tokens)]
        except Exception as exc:  # a bug: the handler re-raises it and the server logs its traceback
            return [(None, exc)] * len(jobs)


# ---- the model work --------------------------------------------------------------------------
class Service:
    """Batched predict and explain on one shared Explainer; called in worker threads."""

    def __init__(self, explainer: "Explainer"):
        self.explainer = explainer
        self._torch = threading.Lock()  # torch methods set taps and relu rules on the one shared module

    def check(self, job: PredictJob | ExplainJob) -> None:
        """Refuse an image over the pixel limit (from its header), an unknown output, method, parameter, layer or
        colormap, and work over the forward limit, before the job is queued."""
        from .. import methods
        from ..render import COLORMAPS

        from ..images import check_encoded

        explainer = self.explainer
        check_encoded(job.image, explainer.limits, remedy=REMEDY)
        if isinstance(job, PredictJob):
            explainer.output_name(job.output)
            return
        cls = methods.get(job.method)
        output = explainer.output_name(job.output)
        if cls.uses_layer:
            layer = explainer.model.resolve_layer(job.layer, output)
            if cls.engine == "ort":
                explainer.model.spatial_info(layer)
        self.check_cost(job)
        if job.colormap not in COLORMAPS:
            raise HTTPError(400, f"Unknown colormap '{job.colormap}'; use one of {', '.join(COLORMAPS)}.")

    def check_cost(self, job: ExplainJob) -> int:
        """The job's forward passes per image from its method's cost; LimitError (413) over --max-forwards.
        Bad parameters are refused here too (400)."""
        return self.explainer.check_cost(job.method, job.params, job.layer, job.output, job.target, REMEDY)

    def run(self, key: tuple, jobs: list) -> list[dict]:
        return self.predict(jobs) if key[0] == "predict" else self.explain(jobs)

    def predict(self, jobs: list[PredictJob]) -> list[dict]:
        """Top-k per job from one forward over all the jobs' images."""
        predictions = self.explainer.predict([job.image for job in jobs], top=max(j.top for j in jobs),
                                             output=jobs[0].output)
        return [_prediction(p, job.top) for p, job in zip(predictions, jobs)]

    def explain(self, jobs: list[ExplainJob]) -> list[dict]:
        """One explain call for jobs sharing method, target, layer and params; top-k from the same forward."""
        from .. import methods

        first, explainer = jobs[0], self.explainer
        batch = explainer.prepare([job.image for job in jobs])
        engine = methods.get(first.method).engine
        with self._torch if engine == "torch" else contextlib.nullcontext():
            attributions = explainer.explain(batch, method=first.method, target=first.target, layer=first.layer,
                                             output=first.output, probability=first.probability, **first.params)
        if len(jobs) > 1 and len(attributions) % len(jobs):
            return [self.explain([job])[0] for job in jobs]
        predictions = explainer.predict(batch, top=max(j.top for j in jobs), output=first.output)
        per = len(attributions) // len(jobs)
        return [{"method": first.method, "layer": attributions[0].layer if attributions else None,
                 "predictions": _prediction(prediction, job.top)["top"],
                 "explanations": [_explanation(a, job) for a in attributions[i * per:(i + 1) * per]]}
                for i, (job, prediction) in enumerate(zip(jobs, predictions))]


def _prediction(prediction: "Prediction", top: int) -> dict:
    return {"output": prediction.output, "top": prediction.as_dict()["top"][:top]}


def _explanation(attribution: "Attribution", job: ExplainJob) -> dict:
    """One attribution as JSON: target, params, sizes, the overlay as base64 PNG, the raw map when asked."""
    from ..render import encode_png

    summary = attribution.summary()
    height, width = attribution.heatmap.shape[:2]
    entry = {"target": summary["target"], "params": summary["params"], "layer": summary["layer"],
             "raw_shape": summary["raw_shape"], "width": int(width), "height": int(height),
             "extras": summary["extras"],
             "overlay_png": base64.b64encode(encode_png(attribution.overlay(job.alpha, job.colormap))).decode()}
    if job.raw:
        entry["raw"] = attribution.raw.astype(float).tolist()
    return entry
