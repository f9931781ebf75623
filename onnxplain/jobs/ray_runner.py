"""The same job on Ray Data (`pip install "onnxplain[ray]"`): items -> `map_batches` over a pool of actors,
each building its own Explainer (it holds onnxruntime sessions and does not pickle) -> Parquet.

Defaults cannot deadlock a small machine: actors take fractional CPUs and leave RESERVE_CPUS free for Ray
Data's own tasks (on a 2-CPU local Ray, two 1-CPU actors starved them and the job hung).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from .inputs import Item, check_shard, list_inputs, select
from .store import check_settings, drop_rows, finished, pack_maps, plan_resume, table, write_settings
from .work import JobSpec, Worker, build_explainer

RESERVE_CPUS = 0.5   # left to Ray Data's own tasks (writes, splits) beside the actors
WRITE_CPUS = 0.25    # what one Parquet write task asks for


@dataclass(frozen=True)
class RayPlan:
    """How many actors, and what each asks Ray for; `threads` is onnxruntime's intra-op threads per actor."""
    actors: int
    cpus: float
    gpus: float
    threads: int


def plan_actors(total_cpus: float, total_gpus: float = 0.0, actors: int | None = None,
                cpus_per_actor: float | None = None, gpus_per_actor: float | None = None) -> RayPlan:
    """Actors that fit the cluster with RESERVE_CPUS to spare: by default one per GPU, else one per 4 CPUs
    (at least one); onnxruntime threads follow each actor's CPUs."""
    room = total_cpus - RESERVE_CPUS
    if room <= 0:
        raise UserError(f"Ray has {total_cpus:g} CPUs; a job needs more than {RESERVE_CPUS:g}.")
    if actors is None:
        actors = int(total_gpus) if total_gpus >= 1 else max(1, int(room // 4))
    if actors < 1:
        raise UserError(f"actors must be at least 1, not {actors}.")
    cpus = cpus_per_actor if cpus_per_actor is not None else round(room / actors, 3)
    if cpus * actors > room + 1e-9:
        raise UserError(f"{actors} actors of {cpus:g} CPUs leave Ray Data no CPU for its own tasks (the job "
                        f"would hang); use at most {room:g} CPUs in all.")
    gpus = gpus_per_actor if gpus_per_actor is not None else (min(1.0, total_gpus / actors) if total_gpus else 0.0)
    return RayPlan(actors, cpus, gpus, max(1, math.floor(cpus + 0.5)))


class ExplainActor:
    """One Ray actor: builds the Explainer in its own process and turns batches of items into result rows;
    with `spec.overlays` it writes the in-process job's overlay files under `out` (Worker._overlay)."""

    def __init__(self, spec: JobSpec, threads: int, out: str | None = None):
        self.worker = Worker(spec, build_explainer(spec, threads), Path(out) if out else None)

    def __call__(self, batch: dict) -> "object":
        items = [Item(str(p), str(n), json.loads(t)) for p, n, t in zip(batch["path"], batch["name"], batch["target"])]
        rows, maps = self.worker.process(items)
        inline = [pack_maps({k: v for k, v in maps.items() if k.startswith(item.name + "::")}) for item in items]
        return table(rows, inline)


def pending(items: Sequence[Item], out: str | os.PathLike, params_hash: str, retry_errors: bool = False
            ) -> tuple[list[Item], set]:
    """The items a Ray job's folder `out` has not done with these parameters, and the rows their runs
    supersede (the in-process rule, store.resume_state)."""
    return plan_resume(items, finished(sorted(Path(out).glob("*.parquet")), params_hash), retry_errors)


def run_ray(spec: JobSpec, inputs: str | os.PathLike | Sequence, out: str | os.PathLike,
            address: str | None = None, actors: int | None = None, cpus_per_actor: float | None = None,
            gpus_per_actor: float | None = None, shard: tuple[int, int] | str | None = None,
            resume: bool = False, num_cpus: int | None = None, retry_errors: bool = False) -> Path:
    """Run `spec` on Ray Data and write Parquet files (rows of results.parquet plus an inline `maps` column of
    npz bytes) into `out`, with `spec.overlays` also the in-process job's files under `out/overlays`; returns
    `out`. Without `address` a local Ray starts (`num_cpus` caps it); with one
    it connects to that cluster, whose workers must see the image paths and `out` (a shared filesystem).
    `resume` skips the images `out` already holds (`store.resume_state`: same path, content and
    parameters; error rows too unless `retry_errors`); the rows (and overlay files) of a file replaced since,
    or of one that could not be read, are dropped and it runs again; `out/job.json` holds the settings, and a
    resume with others is refused as in-process (`store.check_settings`).
    """
    try:
        import ray
    except ImportError:
        raise UserError('Ray is not installed; pip install "onnxplain[ray]" (or run without --ray).') from None
    items = inputs if isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], Item) \
        else list_inputs(inputs)
    items = select(items, check_shard(shard))
    out = Path(out)
    if resume:
        check_settings(out, spec.params_hash())   # the in-process store's check: other settings are refused
        items, stale = pending(items, out, spec.params_hash(), retry_errors)
        drop_rows(sorted(out.glob("*.parquet")), stale, out=out)   # killed after this, those are simply not done
    elif out.is_dir():
        for old in out.glob("*.parquet"):
            old.unlink()
        shutil.rmtree(out / "overlays", ignore_errors=True)
        (out / "job.json").unlink(missing_ok=True)
    if not items:
        return out
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    resources = ray.cluster_resources()
    plan = plan_actors(resources.get("CPU", 1.0), resources.get("GPU", 0.0), actors, cpus_per_actor, gpus_per_actor)
    actor_spec = replace(spec, device="cuda") if plan.gpus else spec
    rows = [{"path": i.path, "name": i.name, "target": json.dumps(i.target)} for i in items]
    data = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // spec.batch_size, 4 * plan.actors)))
    gpus = {"num_gpus": plan.gpus} if plan.gpus else {}
    pool = ray.data.ActorPoolStrategy(size=plan.actors)   # `concurrency=` is deprecated since Ray 2.51
    results = data.map_batches(ExplainActor, fn_constructor_kwargs={"spec": actor_spec, "threads": plan.threads,
                                                      "out": str(out.resolve())},
                               batch_size=spec.batch_size, batch_format="numpy", compute=pool,
                               num_cpus=plan.cpus, **gpus)
    out.mkdir(parents=True, exist_ok=True)
    write_settings(out, spec.as_dict(), spec.params_hash())
    results.write_parquet(str(out), ray_remote_args={"num_cpus": WRITE_CPUS})
    return out
