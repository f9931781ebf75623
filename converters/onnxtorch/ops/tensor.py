"""Ops that build, select, combine or convert tensors: Constant(OfShape), Range, Cast, Identity, Dropout,
Concat, Split, Slice, Gather*, Scatter*, Pad, Trilu, TopK, ArgMax/ArgMin, NonZero, OneHot."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import DYNAMIC, refuses
from ..errors import UnsupportedModel
from ..registry import register
from .common import axis_list, ints, scalar, to_dtype, unsigned_in_int64


@register("Constant")
def constant(*, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             sparse_value=None) -> torch.Tensor:
    """The node's constant in whichever attribute form it came (the builder turns tensors into torch)."""
    for tensor in (value, sparse_value):
        if tensor is not None:
            return tensor
    if value_float is not None:
        return torch.tensor(value_float, dtype=torch.float32)
    if value_floats is not None:
        return torch.tensor(value_floats, dtype=torch.float32)
    if value_int is not None:
        return torch.tensor(value_int, dtype=torch.int64)
    if value_ints is not None:
        return torch.tensor(value_ints, dtype=torch.int64)
    raise UnsupportedModel("Constant node without a numeric value (strings are not supported)")


@register("ConstantOfShape", since=9)
def constant_of_shape(shape: torch.Tensor, *, value: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor of the given shape filled with `value` (float32 zero by default), on the CPU."""
    if value is None:
        return torch.zeros(ints(shape), dtype=torch.float32)
    return torch.full(ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


@register("Range", since=11)
def range_(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """start, start + delta, ... up to (excluding) limit, in start's dtype."""
    return torch.arange(scalar(start), scalar(limit), scalar(delta), dtype=start.dtype, device=start.device)


FLOAT8_MANTISSA = {torch.float8_e4m3fn: 3, torch.float8_e4m3fnuz: 3, torch.float8_e5m2: 2, torch.float8_e5m2fnuz: 2}
FLOAT8 = tuple(FLOAT8_MANTISSA)


def convert(x: torch.Tensor, dtype: torch.dtype, saturate: int) -> torch.Tensor:
    """x as dtype; into a float8 type with `saturate`, out-of-range values (and infinities) become the
    largest finite value of their sign, as the spec says (NaN stays NaN)."""
    if dtype not in FLOAT8 or not x.is_floating_point():
        return x.to(dtype)
    largest = torch.finfo(dtype).max
    x = x.to(torch.float32)
    if saturate:
        return torch.clamp(x, -largest, largest).to(dtype)
    # without saturation what rounds past the largest value is inf (e5m2) or NaN (the others)
    limit = largest + 2.0 ** (math.floor(math.log2(largest)) - FLOAT8_MANTISSA[dtype]) / 2
    overflow = torch.tensor(math.inf if dtype == torch.float8_e5m2 else math.nan, device=x.device)
    return torch.where(x.abs() > limit, overflow.copysign(x), x).to(dtype)


@register("Cast")
def cast(x: torch.Tensor, *, to: int, saturate: int = 1) -> torch.Tensor:
    """x converted to the ONNX data type `to` (float to int truncates toward zero)."""
    return convert(x, to_dtype(to), saturate)


@register("CastLike", since=15)
def cast_like(x: torch.Tensor, like: torch.Tensor, *, saturate: int = 1) -> torch.Tensor:
    """x converted to like's dtype."""
    return convert(x, like.dtype, saturate)


@register("Identity")
def identity(x: torch.Tensor) -> torch.Tensor:
    """x itself."""
    return x


def dropout_refusal(inputs: list, *, seed: int | None = None, **_) -> str | None:
    """Training-mode dropout without a seed draws a random mask no runtime reproduces: refused unless it is
    known to be off (training_mode absent or a constant false) or to drop nothing (a constant ratio 0).
    With a seed the mask is the spec reference's (numpy's generator seeded with it), so it runs."""
    training = inputs[2] if len(inputs) > 2 else None
    if training is None or seed is not None:
        return None
    if training is DYNAMIC:
        return "takes training_mode at run time without a seed, and such dropout draws random masks"
    ratio = inputs[1] if len(inputs) > 1 else None
    if bool(training.reshape(-1)[0]) and not (ratio is not DYNAMIC and ratio is not None and float(ratio) == 0):
        return "runs in training mode without a seed, and its random masks no runtime reproduces"
    return None


def seeded_mask(shape: torch.Size, ratio: float, seed: int) -> torch.Tensor:
    """The spec reference's training-mode mask: uniform draws of numpy's generator seeded with `seed`, kept
    where they reach `ratio`."""
    return torch.from_numpy(np.random.RandomState(seed).uniform(0.0, 1.0, tuple(shape)) >= ratio)


@refuses(dropout_refusal)
@register("Dropout")
def dropout(x: torch.Tensor, ratio=None, training_mode=None, *, seed: int | None = None, is_test: int = 0,
            output_count: int = 1):
    """Inference dropout (training_mode absent or false, or ratio 0): x unchanged and an all-true mask.
    Training mode with a seed: x * mask / (1 - ratio) with the reference's seeded mask (the same on every
    call, as the reference draws it)."""
    p = float(scalar(ratio, 0.5))
    if training_mode is None or not bool(scalar(training_mode)) or p == 0:
        return (x, torch.ones(x.shape, dtype=torch.bool, device=x.device)) if output_count > 1 else x
    if seed is None:
        raise UnsupportedModel("Dropout in training mode needs a seed for the converter to draw its mask")
    mask = seeded_mask(x.shape, p, seed).to(x.device)
    y = x * mask.to(x.dtype) * (1.0 / (1.0 - p))
    return (y, mask) if output_count > 1 else y


@register("Concat")
def concat(*tensors: torch.Tensor, axis: int) -> torch.Tensor:
    """Join the inputs along `axis` (CPU shape-derived parts follow the others' device)."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        device = next(d for d in devices if d.type != "cpu")
        tensors = [t.to(device) for t in tensors]
    return torch.cat(tensors, axis)


@register("Split")
def split(x: torch.Tensor, split=None, *, axis: int = 0, num_outputs: int | None = None,
          output_count: int = 1) -> tuple[torch.Tensor, ...]:
    """Split along `axis` by the given sizes (attribute before opset 13, input after) or into equal parts
    (num_outputs from opset 18, else the node's output count; the last part may be smaller)."""
    sizes = ints(split)
    if not sizes:
        parts = num_outputs or output_count
        sizes = -(-x.shape[axis] // parts)
    return torch.split(x, sizes, axis)


@register("Slice")
def slice_(x: torch.Tensor, starts, ends, axes=None, steps=None) -> torch.Tensor:
    """numpy-style slicing with ONNX clamping; attributes before opset 10, inputs after. Negative steps
    are taken as a positive-step slice then flipped, since torch slicing has no negative step."""
    starts, ends = ints(starts), ints(ends)
    axes = axis_list(ints(axes), x.dim()) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    flips = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = x.shape[axis]
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
            continue
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        count = -(-(start - end) // -step) if start > end else 0
        if count == 0:
            index[axis] = slice(0, 0)
        else:
            index[axis] = slice(start + (count - 1) * step, start + 1, -step)
            flips.append(axis)
    y = x[tuple(index)]
    return y.flip(flips) if flips else y


def positive_indices(indices: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """int64 indices on `device` with negative entries counted from the end."""
    indices = indices.to(device=device, dtype=torch.int64)
    return torch.where(indices < 0, indices + size, indices)


@register("Gather")
def gather(x: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    """Take entries along `axis` (numpy take); a scalar index selects and drops the axis."""
    axis = axis + x.dim() if axis < 0 else axis
    if indices.dim() == 0:
        return x.select(axis, int(indices))
    flat = positive_indices(indices.reshape(-1), x.shape[axis], x.device)
    y = x.index_select(axis, flat)
    return y.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


@register("GatherElements", since=11)
def gather_elements(x: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    """torch.gather with negative indices allowed."""
    return torch.gather(x, axis, positive_indices(indices, x.shape[axis], x.device))


@register("GatherND", since=11)
def gather_nd(x: torch.Tensor, indices: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
    """Gather slices of x addressed by the last axis of `indices`, after `batch_dims` shared batch axes."""
    b, k = batch_dims, indices.shape[-1]
    flat_x = x.reshape((-1,) + tuple(x.shape[b:]))
    idx = indices.to(device=x.device, dtype=torch.int64).reshape(flat_x.shape[0], -1, k)
    sizes = torch.tensor(x.shape[b:b + k], device=x.device)
    idx = torch.where(idx < 0, idx + sizes, idx)
    batch = torch.arange(flat_x.shape[0], device=x.device)[:, None]
    y = flat_x[(batch,) + tuple(idx.unbind(-1))]
    return y.reshape(tuple(indices.shape[:-1]) + tuple(x.shape[b + k:]))


@register("ScatterND", since=11)
def scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *,
               reduction: str = "none") -> torch.Tensor:
    """Copy of x with the slices addressed by `indices` replaced by updates, or combined with them
    (reduction add, mul, max, min)."""
    idx = indices.to(device=x.device, dtype=torch.int64)
    if reduction in ("none", "add"):
        return x.index_put(tuple(idx.unbind(-1)), updates, accumulate=reduction == "add")
    if reduction not in SCATTER_REDUCE:
        raise UnsupportedModel(f"ScatterND reduction '{reduction}' is not supported")
    k = idx.shape[-1]
    strides = torch.tensor([int(torch.tensor(x.shape[i + 1:k]).prod()) for i in range(k)], device=x.device)
    flat_index = ((idx % torch.tensor(x.shape[:k], device=x.device)) * strides).sum(-1).reshape(-1)
    flat = x.reshape(int(torch.tensor(x.shape[:k]).prod()), -1)
    rows = updates.reshape(flat_index.shape[0], flat.shape[1]).to(x.dtype)
    where = flat_index[:, None].expand(rows.shape)
    return flat.scatter_reduce(0, where, rows, SCATTER_REDUCE[reduction]).reshape(x.shape)


SCATTER_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


SCATTER_REDUCE = {"mul": "prod", "max": "amax", "min": "amin"}


@register("ScatterElements", since=11)
def scatter_elements(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *, axis: int = 0,
                     reduction: str = "none") -> torch.Tensor:
    """torch.scatter (reduction none or add) with negative indices allowed."""
    idx = positive_indices(indices, x.shape[axis], x.device)
    if reduction == "none":
        return torch.scatter(x, axis, idx, updates)
    if reduction == "add":
        return torch.scatter_add(x, axis, idx, updates)
    if reduction in SCATTER_REDUCE:
        return torch.scatter_reduce(x, axis, idx, updates, SCATTER_REDUCE[reduction], include_self=True)
    raise UnsupportedModel(f"ScatterElements reduction '{reduction}' is not supported")


TORCH_PAD_MODES = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def pad_indices(size: int, begin: int, end: int, mode: str) -> torch.Tensor:
    """Source positions of a padded axis for reflect / edge / wrap padding."""
    idx = torch.arange(-begin, size + end)
    if mode == "edge" or size == 1:
        return idx.clamp(0, size - 1)
    if mode == "wrap":
        return idx % size
    period = 2 * (size - 1)
    idx = idx.abs() % period
    return torch.where(idx >= size, period - idx, idx)


@register("Pad", since=2)
def pad(x: torch.Tensor, pads, constant_value=None, axes=None, *, mode: str = "constant",
        value: float = 0.0) -> torch.Tensor:
    """Pad (or crop, for negative pads) with a constant, reflect, edge or wrap mode; pads come as an
    attribute before opset 11 and as an input after, optionally for the listed axes (opset 18)."""
    pads = ints(pads)
    n = len(pads) // 2
    axes = axis_list(ints(axes), x.dim()) if axes is not None else list(range(n))
    per_axis = {a: (b, e) for a, b, e in zip(axes, pads[:n], pads[n:]) if b or e}
    if not per_axis:
        return x
    first = min(per_axis)
    order: list[int] = []
    for axis in reversed(range(first, x.dim())):
        order += per_axis.get(axis, (0, 0))
    if mode == "constant":
        return F.pad(x, order, value=scalar(constant_value, value))
    trailing = x.dim() - first
    if trailing <= 3 and x.dim() in (trailing + 1, trailing + 2) and min(order) >= 0 and \
            (mode != "reflect" or all(p < x.shape[a] for a, (b, e) in per_axis.items() for p in (b, e))):
        return F.pad(x, order, mode=TORCH_PAD_MODES[mode])
    for axis, (begin, end) in per_axis.items():
        x = x.index_select(axis, pad_indices(x.shape[axis], begin, end, mode).to(x.device))
    return x


@register("Trilu", since=14)
def trilu(x: torch.Tensor, k=None, *, upper: int = 1) -> torch.Tensor:
    """Upper (or lower) triangle of the last two axes, from diagonal k."""
    k = int(scalar(k, 0))
    return torch.triu(x, k) if upper else torch.tril(x, k)


@register("TopK")
@unsigned_in_int64()
def top_k(x: torch.Tensor, K=None, *, axis: int = -1, largest: int = 1, sorted: int = 1, k: int | None = None):
    """The k largest (or smallest) values along `axis` and their int64 indices (k: attribute before opset 10);
    tied values come in ascending index order, as the spec and onnxruntime give them."""
    count = int(scalar(K, k))
    order = torch.sort(x, dim=axis, descending=bool(largest), stable=True)  # ties keep ascending indices
    return order.values.narrow(axis, 0, count), order.indices.narrow(axis, 0, count)


def arg_extreme(fn, x: torch.Tensor, axis: int, keepdims: int, select_last_index: int) -> torch.Tensor:
    """Index of the first (or last) extreme value along `axis`."""
    if not select_last_index:
        return fn(x, axis, bool(keepdims))
    return x.shape[axis] - 1 - fn(x.flip(axis), axis, bool(keepdims))


@register("ArgMax")
def arg_max(x: torch.Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> torch.Tensor:
    """Index of the maximum along `axis` (int64)."""
    return arg_extreme(torch.argmax, x, axis, keepdims, select_last_index)


@register("ArgMin")
def arg_min(x: torch.Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0) -> torch.Tensor:
    """Index of the minimum along `axis` (int64)."""
    return arg_extreme(torch.argmin, x, axis, keepdims, select_last_index)


@register("NonZero", since=9)
def non_zero(x: torch.Tensor) -> torch.Tensor:
    """Coordinates of the non-zero entries, one row per axis (int64)."""
    return torch.nonzero(x).t()


@register("OneHot", since=9)
def one_hot(indices: torch.Tensor, depth: torch.Tensor, values: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    """values[1] at each index's position along a new axis of length depth, values[0] elsewhere."""
    size = int(scalar(depth))
    idx = indices.to(torch.int64)
    idx = torch.where(idx < 0, idx + size, idx)
    hot = F.one_hot(idx.clamp(0, size - 1), size) & ((idx >= 0) & (idx < size)).unsqueeze(-1).to(torch.int64)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    y = torch.where(hot.bool(), on, off)
    return y.movedim(-1, axis if axis >= 0 else axis + y.dim())
