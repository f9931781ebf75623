"""Batch sizes from free memory: a per-image footprint from tensor shapes, and the free bytes of a device."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

SAFETY = 2.0    # the per-image estimate times this: workspaces, allocator rounding, copies on the way
HEADROOM = 0.5  # share of the free memory one run may fill (the rest: weights, other processes, fragmentation)


# ---- batch sizes from free memory ----------------------------------------------------------------
def per_image_bytes(shapes: Iterable[tuple[str, Sequence[Any] | None]]) -> int:
    """Bytes that one image's activations take: the sum over tensors (dtype name, shape with a batch axis first)
    of their size; unknown dims and dtypes count as 1 and 4 bytes. An over-estimate of the peak, on purpose."""
    total = 0
    for dtype, shape in shapes:
        if shape is None:
            continue
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = 4
        total += itemsize * math.prod(d for d in list(shape)[1:] if isinstance(d, int) and d > 0)
    return total


def auto_batch_size(per_image: int, free: int | None, maximum: int) -> int:
    """Images per batch: as many as fit in HEADROOM of `free` bytes at SAFETY x `per_image` each,
    between 1 and `maximum` (all of `maximum` when the free memory or the footprint is unknown)."""
    maximum = max(1, int(maximum))
    if not free or per_image <= 0:
        return maximum
    return max(1, min(maximum, int(free * HEADROOM // (per_image * SAFETY))))


def free_memory(device: str) -> int | None:
    """Free bytes on `device`: the GPU's through torch (None without a CUDA torch), else available RAM."""
    if device == "cuda":
        try:
            import torch
            return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
        except Exception:  # an unusable driver: fall back to the configured batch size
            return None
    return available_ram()


def available_ram() -> int | None:
    """Available RAM in bytes (MemAvailable, within the cgroup's limit where one is set), or None."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    except OSError:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            room = int(Path(limit).read_text()) - int(Path(used).read_text())
        except (OSError, ValueError):  # no such cgroup file, or "max"
            continue
        found = room if found is None else min(found, room)
    return found
