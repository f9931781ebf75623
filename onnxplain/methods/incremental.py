"""Incremental occlusion (Nakandala, Kumar & Papakonstantinou, SIGMOD 2019): the unoccluded activations are
computed once; for each batch of windows every layer up to the plan's cut recomputes only the box its window
changed (plus the halo its kernel reads) from those cached activations, then the model's tail runs on full
maps with the boxes pasted in. Exact unless the plan was built with a projective-field threshold.

The prefix runs node by node in torch on crops (onnxruntime cannot take per-window offsets); the tail is the
onnxruntime (or torch) runtime of the model cut at the plan's cut tensor.
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from ..limits import checkpoint
from .incremental_plan import Axis, Plan, build_plan, reach, window_axis

MAX_LANES = 4  # chunks run at once on the CPU; more cores give each lane's tail more threads

if TYPE_CHECKING:
    import onnx
    import torch

    from ..images import Prepared
    from ..runtime import Runtime
    from .base import MethodContext


def occlusion_plan(context: "MethodContext", batch: "Prepared", window: tuple[int, int], ys: np.ndarray,
                   xs: np.ndarray, threshold: float = 0.0) -> Plan:
    """The incremental plan for windows starting at rows `ys` and columns `xs` of the model input."""
    h, w = batch.hw
    rows, cols = window_axis(ys, window[0], h), window_axis(xs, window[1], w)
    source = batch.spec.name
    if batch.spec.layout != "NCHW":
        return Plan([], {}, None, 1.0, 1.0, f"the input layout is {batch.spec.layout}, not NCHW")
    plan = build_plan(context.model, source, rows, cols, threshold)
    if plan.cut is not None:
        cut, _ = context.tail(plan.cut)
        if any(n != source for n in cut.crossing):
            plan.reason, plan.cut = f"tensors {', '.join(cut.crossing)} cross the cut at '{plan.cut}'", None
    return plan


def _rows(t: "torch.Tensor") -> "torch.Tensor":
    """(B*h*w, C) view of a (B, C, h, w) tensor stored channels_last (copied into that layout if it is not)."""
    import torch
    b, c, h, w = t.shape
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(b * h * w, c)


def region_index(ty: np.ndarray, tx: np.ndarray, dy: np.ndarray, dx: np.ndarray, size: tuple[int, int],
                 patch: tuple[int, int], width: int, base: int) -> np.ndarray:
    """Row of each element of the (B, qh, qw) crops at (ty, tx) in a flat (positions, C) buffer: the map's
    row-major positions (`width` wide) first, then from row `base` the (B, ph, pw) patches, which the crops
    read wherever their box (at offset dy, dx in the crop) lies."""
    (qh, qw), (ph, pw) = size, patch
    i, j = np.arange(qh), np.arange(qw)
    cache = ((ty[:, None] + i) * width)[:, :, None] + (tx[:, None] + j)[:, None, :]
    pi, pj = i - dy[:, None], j - dx[:, None]                      # (B, qh), (B, qw) positions in the patch
    inside = ((pi >= 0) & (pi < ph))[:, :, None] & ((pj >= 0) & (pj < pw))[:, None, :]
    own = (base + np.arange(len(ty)) * ph * pw)[:, None, None] + (pi * pw)[:, :, None] + pj[:, None, :]
    return np.where(inside, own, cache).reshape(-1)


class _Source:
    """One padded cached map as flat channels_last rows, followed by one scratch area per lane (`slots` of
    `room` rows) for a chunk's patches: a crop with the patches pasted in is then one index_select (no Python
    loop over windows). The map's rows are written once and only read after, so lanes share one Source and
    each writes only its own slot."""

    def __init__(self, padded: "torch.Tensor", slots: int = 1, room: int = 0):
        import torch
        _, self.channels, self.height, self.width = padded.shape
        self.base, self.room, self.slots = self.height * self.width, room, slots
        self.buffer = torch.empty((self.base + slots * room, self.channels), dtype=padded.dtype)
        self.buffer[:self.base] = _rows(padded)

    def crops(self, patch: "torch.Tensor", ty: np.ndarray, tx: np.ndarray, dy: np.ndarray, dx: np.ndarray,
              size: tuple[int, int], slot: int = 0) -> "torch.Tensor":
        """(B, C, qh, qw) channels_last crops at (ty, tx) with `patch` (B, C, ph, pw) written at (dy, dx),
        the patch staged in scratch slot `slot`."""
        import torch
        count = patch.shape[0] * patch.shape[2] * patch.shape[3]
        if count > self.room or not 0 <= slot < self.slots:
            raise ValueError(f"a chunk needs {count} scratch rows in slot {slot}; the source has {self.slots} "
                             f"slots of {self.room}")
        start = self.base + slot * self.room
        self.buffer[start:start + count] = _rows(patch)
        index = region_index(ty, tx, dy, dx, size, tuple(patch.shape[2:]), self.width, start)
        crop = self.buffer.index_select(0, torch.from_numpy(index))
        return crop.view(len(ty), size[0], size[1], self.channels).permute(0, 3, 1, 2)


def _paste(crop: "torch.Tensor", patch: "torch.Tensor", dys: Sequence[int], dxs: Sequence[int]) -> "torch.Tensor":
    """`crop` (B, C, h, w) with `patch` (B, C, ph, pw) written at offsets (dy, dx) per window, cut to the crop."""
    h, w = crop.shape[2:]
    ph, pw = patch.shape[2:]
    for b, (dy, dx) in enumerate(zip(dys, dxs)):
        y0, y1, x0, x1 = max(dy, 0), min(dy + ph, h), max(dx, 0), min(dx + pw, w)
        if y1 > y0 and x1 > x0:
            crop[b, :, y0:y1, x0:x1] = patch[b, :, y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return crop


class IncrementalRunner:
    """Runs one plan for one image: cached activations, then per window batch the boxes up to the cut.

    The cached maps are built once per image and shared read-only by every lane (thread) running chunks;
    each lane writes only its own scratch slot of each Source, for chunks of at most `batch` windows.
    Everything in the prefix is channels_last (torch's convolutions on small crops run 10-25% faster so,
    and a crop's positions are rows of C contiguous values, gathered with one index_select)."""

    def __init__(self, plan: Plan, x: np.ndarray, lanes: int = 1, batch: int = 1):
        import torch
        self.plan, self.lanes, self.batch = plan, lanes, batch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(x[None], np.float32))
            self.cache, self.sources = self._full(x.contiguous(memory_format=torch.channels_last))

    def _full(self, x: "torch.Tensor") -> tuple[dict, dict]:
        """Unoccluded activations of every prefix tensor, and the padded inputs each step reads (as Sources
        with a scratch slot per lane, sized for the input's box in chunks of `batch` windows)."""
        import torch.nn.functional as F
        source = next(iter(self.plan.boxes))
        cache, sources = {source: x}, {}
        for step in self.plan.steps:
            ins = [cache[n] for n in step.inputs]
            if step.window:
                top, left, bottom, right = self._pads(step, ins[0])
                ins = [F.pad(ins[0], (left, right, top, bottom), value=step.pad_value)]
            sources[step.output] = [_Source(t, self.lanes, self.batch * self._box_size(name))
                                    for name, t in zip(step.inputs, ins)]
            cache[step.output] = step.fn(*ins)
        return cache, sources

    def _box_size(self, name: str) -> int:
        """Positions in one window's box of tensor `name` (the rows its patch takes in a scratch slot)."""
        rows, cols = self.plan.boxes[name]
        return rows.size * cols.size

    def _pads(self, step, value) -> tuple[int, int, int, int]:
        """The step's pads, the ends widened where ceil_mode makes the last window run past them."""
        top, left, bottom, right = step.pads
        rows, cols = self.plan.boxes[step.output]
        need_h = (rows.length - 1) * step.stride[0] + (step.kernel[0] - 1) * step.dilation[0] + 1
        need_w = (cols.length - 1) * step.stride[1] + (step.kernel[1] - 1) * step.dilation[1] + 1
        h, w = value.shape[2:]
        return top, left, max(bottom, need_h - h - top), max(right, need_w - w - left)

    def patches(self, x_patch: "torch.Tensor", r: np.ndarray, c: np.ndarray, slot: int = 0) -> "torch.Tensor":
        """The cut tensor's boxes (B, C, bh, bw) for windows at row positions `r` and column positions `c`,
        given the input's boxes `x_patch` (B, C, h, w); `slot` is the calling lane's scratch slot."""
        import torch
        source = next(iter(self.plan.boxes))
        patches = {source: x_patch.contiguous(memory_format=torch.channels_last)}
        for step in self.plan.steps:
            rows, cols = self.plan.boxes[step.output]
            if step.window:
                (qy, qh), (qx, qw) = reach(step, 0, rows), reach(step, 1, cols)
                offsets = (step.pads[0], step.pads[1])
            else:
                qy, qh, qx, qw, offsets = rows.start, rows.size, cols.start, cols.size, (0, 0)
            ins = [self._region(name, src, patches[name], qy, qh, qx, qw, offsets, r, c, slot)
                   for name, src in zip(step.inputs, self.sources[step.output])]
            patches[step.output] = step.fn(*ins)
        return patches[self.plan.cut]

    def _region(self, name, src, patch, qy, qh, qx, qw, offsets, r, c, slot) -> "torch.Tensor":
        """(B, C, qh, qw) values of input `name` at the region each window's step reads: cached values with
        the window's box pasted in (the box itself where it is exactly that region)."""
        rows, cols = self.plan.boxes[name]
        py, px = rows.start[r] + offsets[0], cols.start[c] + offsets[1]
        ty, tx = qy[r], qx[c]
        if rows.size == qh and cols.size == qw and np.array_equal(py, ty) and np.array_equal(px, tx):
            return patch
        return src.crops(patch, ty, tx, py - ty, px - tx, (qh, qw), slot)

    def full_cut(self, patch: "torch.Tensor", r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """The cut tensor on full maps (B, C, H, W) with each window's box pasted into the cached map."""
        import torch
        rows, cols = self.plan.boxes[self.plan.cut]
        full = self.cache[self.plan.cut].expand(len(r), -1, -1, -1).contiguous(memory_format=torch.contiguous_format)
        return _paste(full, patch, rows.start[r].tolist(), cols.start[c].tolist()).numpy()


def input_patches(x: np.ndarray, fill: np.ndarray, masks: tuple[np.ndarray, np.ndarray], rows: Axis, cols: Axis,
                  r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(B, C, h, w) boxes of the occluded inputs: the fill where the window covers, the image elsewhere."""
    y = rows.start[r][:, None] + np.arange(rows.size)
    xx = cols.start[c][:, None] + np.arange(cols.size)
    covered = masks[0][r[:, None], y][:, :, None] & masks[1][c[:, None], xx][:, None, :]
    image = x[:, y[:, :, None], xx[:, None, :]].transpose(1, 0, 2, 3)
    filled = fill[:, y[:, :, None], xx[:, None, :]].transpose(1, 0, 2, 3)
    return np.where(covered[:, None], filled, image).astype(np.float32)


def incremental_chunks(context: "MethodContext", plan: Plan, total: int, size: int) -> list[np.ndarray]:
    """Window indices 0..total-1 in chunks of at most `size`, as many as a multiple of the lanes that run them
    side by side (so no lane idles through the last round), in order."""
    lanes = _lanes(context.tail(plan.cut)[1])
    count = -(-total // max(size, 1))
    if lanes is not None:
        count = -(-count // lanes[1]) * lanes[1]
    return [k for k in np.array_split(np.arange(total), min(count, total)) if len(k)]


def incremental_outputs(context: "MethodContext", plan: Plan, x: np.ndarray, fill: np.ndarray,
                        masks: tuple[np.ndarray, np.ndarray], occluded: Callable[[np.ndarray], np.ndarray],
                        chunks: Sequence[np.ndarray], nx: int) -> Iterator[dict[str, np.ndarray]]:
    """The model's outputs for each chunk of window indices (row-major over Py x Px positions) of image `x`
    (C, H, W), computed incrementally; `occluded(k)` builds full occluded inputs when the tail reads the input.

    On onnxruntime's CPU provider lanes run whole chunks (prefix, then the tail) side by side, one per
    core up to MAX_LANES (the tail gets the cores left over): on 2 cores no thread waits on another inside
    a chunk, where a prefix thread beside a two-thread tail made both wait at every operator's barrier. Elsewhere (CUDA, the torch engine, one
    core) the prefix of the next chunk runs in a worker thread while the tail runs the current one. The
    prefix always uses one torch thread per worker (its crops are small).
    """
    import torch
    cut, runtime = context.tail(plan.cut)
    source = next(iter(plan.boxes))
    rows, cols = plan.boxes[source]
    fill = np.broadcast_to(fill, x.shape)
    unread = np.repeat(x[None], max(map(len, chunks)), 0) if cut.crossing and chunks and \
        _shape_only(cut.tail, source) else None
    lanes = _lanes(runtime)
    local, taken = threading.local(), itertools.count()  # each worker thread's scratch slot

    def feeds(k: np.ndarray) -> dict[str, np.ndarray]:
        torch.set_num_threads(1)
        if not hasattr(local, "slot"):
            local.slot = next(taken)
        with torch.inference_mode():
            r, c = (k // nx).astype(np.int64), (k % nx).astype(np.int64)
            patch = torch.from_numpy(input_patches(x, fill, masks, rows, cols, r, c))
            out = {plan.cut: runner.full_cut(runner.patches(patch, r, c, local.slot), r, c)}
        if cut.crossing:  # the tail reads the input; through Shape only, any image of its shape will do
            out[source] = occluded(k) if unread is None else unread[:len(k)]
        return out

    threads = torch.get_num_threads()  # set_num_threads is process-wide: restored when the image is done
    try:
        torch.set_num_threads(1)  # the cached maps as each lane used to build them: same values
        runner = IncrementalRunner(plan, x, lanes[1] if lanes else 1, max(map(len, chunks), default=1))
        if lanes is None:
            yield from _pipelined(feeds, runtime, chunks)
        else:
            yield from _side_by_side(feeds, *lanes, chunks)
    finally:
        torch.set_num_threads(threads)


def _shape_only(tail: "onnx.ModelProto", name: str) -> bool:
    """Whether every node of `tail` that reads tensor `name` is a Shape node."""
    return all(node.op_type == "Shape" for node in tail.graph.node if name in node.input)


def _lanes(runtime) -> tuple["Runtime", int] | None:
    """(the tail's runtime for one lane, how many lanes) on onnxruntime's CPU provider with two or more
    cores, else None: up to MAX_LANES lanes (each with its own scratch slots), the cores shared among them."""
    from ..runtime import Runtime
    if not isinstance(runtime, Runtime) or runtime.device != "cpu":
        return None
    cores = runtime.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                else os.cpu_count() or 1)
    lanes = min(cores, MAX_LANES)
    return (runtime.with_threads(cores // lanes), lanes) if lanes > 1 else None


def _side_by_side(feeds: Callable, runtime, lanes: int, chunks: Sequence[np.ndarray]) -> Iterator[dict]:
    """Each chunk's prefix and tail in one of `lanes` worker threads; outputs yielded in chunk order."""
    def whole(k: np.ndarray) -> dict[str, np.ndarray]:
        return runtime.run(feeds(k))

    pool = ThreadPoolExecutor(lanes)
    try:
        pending = [pool.submit(whole, k) for k in chunks[:2 * lanes]]
        for index in range(len(chunks)):
            ready = pending.pop(0).result()
            if index + 2 * lanes < len(chunks):
                pending.append(pool.submit(whole, chunks[index + 2 * lanes]))
            checkpoint()
            yield ready
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _pipelined(feeds: Callable, runtime, chunks: Sequence[np.ndarray]) -> Iterator[dict]:
    """The next chunk's prefix in a worker thread while the tail runs the current chunk."""
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(feeds, chunks[0]) if len(chunks) else None
        for index in range(len(chunks)):
            ready = pending.result()
            pending = pool.submit(feeds, chunks[index + 1]) if index + 1 < len(chunks) else None
            yield runtime.run(ready)


def describe(plan: Plan, used: bool, threshold: float) -> dict:
    """The extras entry saying whether incremental occlusion ran, where it cut, and why."""
    info = {"used": used, **plan.describe()}
    if threshold:
        info["approximate"] = threshold
    return info


__all__: Sequence[str] = ("occlusion_plan", "incremental_chunks", "incremental_outputs", "describe")
