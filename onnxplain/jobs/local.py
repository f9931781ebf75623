"""The streaming job on one machine: images read and run a batch at a time, results appended as they go."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import UserError
from .inputs import Item, check_shard, list_inputs, read_bytes, select
from .store import Store, count_errors, plan_resume
from .work import JobSpec, Worker, build_explainer, default_threads


@dataclass
class JobReport:
    """What a run did: images written now, skipped as already done, failed (error rows), and where; `kept`
    counts the error rows of earlier runs the results still hold (skipped: same bytes, same settings)."""
    out: Path
    total: int
    done: int
    skipped: int
    errors: int
    results: Path | None
    kept: int = 0

    def as_dict(self) -> dict:
        return {"out": str(self.out), "total": self.total, "done": self.done, "skipped": self.skipped,
                "errors": self.errors, "kept": self.kept, "results": str(self.results) if self.results else None}


def run_job(spec: JobSpec, inputs: str | os.PathLike | Sequence, out: str | os.PathLike, resume: bool = False,
            shard: tuple[int, int] | str | None = None, threads: int | None = None, flush_every: int = 256,
            on_flush: Callable[[int], None] | None = None, quiet: bool = True,
            on_batch: Callable[[list[dict]], None] | None = None, retry_errors: bool = False) -> JobReport:
    """Run `spec` over a folder, manifest or list of paths, streaming into `out` (see store.py for the layout).

    Memory holds one batch and at most `flush_every` rows and maps. `resume` skips images whose relative
    path and content hash were already written with the same parameters, error rows included unless
    `retry_errors` (a file replaced in place, or one that could not be read, runs again and its earlier row,
    maps and overlays are dropped first: store.resume_state); `shard=(i, n)` takes the images
    whose name hashes to i of n; `threads` sets onnxruntime's intra-op threads (default: every core).
    `on_batch` sees each batch's rows before they are stored (the CLI prints error rows and may stop there).
    """
    from ..progress import progress
    items = inputs if _is_items(inputs) else list_inputs(inputs)
    items = select(items, check_shard(shard))
    if flush_every < 1:
        raise UserError(f"flush_every must be at least 1, not {flush_every}.")
    explainer = build_explainer(spec, threads or default_threads())
    worker = Worker(spec, explainer, Path(out))
    store = Store(out, spec.as_dict(), worker.params_hash, resume)
    todo, skipped = items, 0
    if resume:
        todo, stale = plan_resume(progress(items, desc="resume", quiet=quiet, unit="image"), store.done(),
                                  retry_errors)
        store.drop(stale)   # before the run: killed after this, those images are simply not done
        skipped = len(items) - len(todo)
    rows, maps, written, errors = [], {}, 0, 0
    batch: list[tuple[Item, bytes | None]] = []

    def run_batch():
        nonlocal written, errors
        new_rows, new_maps = worker.process([i for i, _ in batch], [b for _, b in batch])
        if on_batch is not None:
            on_batch(new_rows)
        rows.extend(new_rows)
        maps.update(new_maps)
        written += len(new_rows)
        errors += sum(r["error"] is not None for r in new_rows)
        batch.clear()

    for item in progress(todo, desc="job", quiet=quiet, unit="image"):
        blob = read_bytes(item.path)
        batch.append((item, blob))
        if len(batch) >= spec.batch_size:
            run_batch()
        if len(rows) >= flush_every:
            store.append(rows, maps)
            rows, maps = [], {}
            if on_flush is not None:
                on_flush(store.next_index)
    if batch:
        run_batch()
    if rows:
        store.append(rows, maps)
    results = store.consolidate()
    return JobReport(Path(out), len(items), written, skipped, errors, results, count_errors(out) - errors)


def _is_items(inputs) -> bool:
    return isinstance(inputs, (list, tuple)) and bool(inputs) and all(isinstance(i, Item) for i in inputs)
