"""Batch jobs over folders and manifests: streaming on one machine (`run_job`) or on Ray Data (`run_ray`).

Importing this loads numpy only; pyarrow, onnxruntime and ray load when a job runs.
"""
from __future__ import annotations

from .inputs import Item, check_shard, in_shard, list_inputs, read_manifest
from .work import JobSpec

__all__ = ["Item", "JobSpec", "JobReport", "check_shard", "in_shard", "iter_maps", "list_inputs", "plan_actors",
           "read_manifest", "read_maps", "read_results", "run_job", "run_ray"]


def __getattr__(name: str):
    if name in ("run_job", "JobReport"):
        from . import local
        return getattr(local, name)
    if name in ("run_ray", "plan_actors"):
        from . import ray_runner
        return getattr(ray_runner, name)
    if name in ("read_results", "read_maps", "iter_maps"):
        from . import store
        return getattr(store, name)
    raise AttributeError(name)
