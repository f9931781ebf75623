"""Receptive fields read from the ONNX graph: which model-input pixels a layer position can see.

Every op on the path from the input is described, per spatial axis, by how its output
position i reads input positions: Conv and pools (i*stride - pad + t*dilation), Pad and
strided Slice (a shift and a step), Resize/Upsample and DepthToSpace (the sampling
rule of the op), ConvTranspose (the positions it scatters from). Elementwise ops and
Concat take the union over their branches; ops that mix every position (global pools,
Gemm, attention, reductions or softmax over H or W) see the whole input.

Two answers come from the same description:
- the textbook field (size, stride, start), walked forward: position i sees pixels
  start + i*stride ... + size - 1, before clipping (after upsampling, a cover of every
  position's field, which then alternates between positions);
- the exact box of one position, walked backward as the set of positions each op
  reads, clipped at every layer (padding reads nothing), so boxes at borders are exact
  too (cubic resizing: a cover). Dilation can leave holes inside a box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from .common import attribute, constant

if TYPE_CHECKING:
    import onnx

    from ..model import Model

TOL = 1e-6   # rounding slack when a field is cut to whole pixels
KERNEL_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}
WINDOW_OPS = KERNEL_OPS | {"ConvTranspose", "Resize", "Upsample", "Pad", "Slice", "SpaceToDepth", "DepthToSpace"}
GLOBAL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Gemm", "InstanceNormalization",
              "GroupNormalization", "TopK", "RoiAlign", "MaxRoiPool", "LSTM", "GRU", "RNN", "Attention",
              "MultiHeadAttention", "NonMaxSuppression", "Einsum"}
AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "CumSum", "Concat", "Split", "Gather", "ArgMax", "ArgMin",
            "LpNormalization"}
BOOKKEEPING_OPS = {"Shape", "Size"}
NEAREST_RULES = {"round_prefer_floor": lambda x: np.ceil(x - 0.5), "round_prefer_ceil": lambda x: np.floor(x + 0.5),
                 "floor": np.floor, "ceil": np.ceil}
TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "tf_half_pixel_for_nn"}


# ---- how one op reads its input along one axis --------------------------------------------
@dataclass(frozen=True)
class Taps:
    """Output i reads input i*step + offset + t*dilation, t < taps (Conv, pools, Pad, Slice, SpaceToDepth)."""
    step: int
    offset: int
    taps: int = 1
    dilation: int = 1
    border: str = "zero"   # reads outside the input: zero (nothing), reflect, edge, wrap

    def affine(self) -> tuple[float, float, float]:
        return float(self.step), float(self.offset), float(self.offset + (self.taps - 1) * self.dilation)

    def reads(self, positions: np.ndarray, length: int) -> np.ndarray:
        index = (positions[:, None] * self.step + self.offset + np.arange(self.taps) * self.dilation).ravel()
        if self.border == "reflect":
            index = np.abs(index)
            index = np.where(index >= length, 2 * (length - 1) - index, index)
        elif self.border == "edge":
            index = np.clip(index, 0, length - 1)
        elif self.border == "wrap":
            index = index % length
        return index[(index >= 0) & (index < length)]


@dataclass(frozen=True)
class Scatter:
    """ConvTranspose: output i gets input q where q*stride - pad + t*dilation = i."""
    stride: int
    pad: int
    taps: int
    dilation: int = 1

    def affine(self) -> tuple[float, float, float]:
        s = self.stride
        return 1 / s, (self.pad - (self.taps - 1) * self.dilation) / s, self.pad / s

    def reads(self, positions: np.ndarray, length: int) -> np.ndarray:
        shifted = (positions[:, None] + self.pad - np.arange(self.taps) * self.dilation).ravel()
        index = shifted[shifted % self.stride == 0] // self.stride
        return index[(index >= 0) & (index < length)]


@dataclass(frozen=True)
class Sample:
    """Resize/Upsample/DepthToSpace: output i samples the input at x(i) by a nearest or interpolation rule."""
    scale: float
    transform: str   # ONNX coordinate_transformation_mode
    rule: str        # a nearest_mode, or linear / bilinear / cubic
    out_length: int | None = None

    def _extent(self, positions: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """First and last input position each output position reads (clamped to the input, as the op does)."""
        i = positions.astype(np.float64)
        if self.transform == "align_corners":
            x = i * (length - 1) / (self.out_length - 1) if self.out_length > 1 else 0 * i
        elif self.transform == "tf_half_pixel_for_nn":
            x = (i + 0.5) / self.scale
        elif self.transform in ("half_pixel", "pytorch_half_pixel"):
            x = (i + 0.5) / self.scale - 0.5
        else:
            x = i / self.scale
        if self.rule in NEAREST_RULES:
            first = last = NEAREST_RULES[self.rule](x)
        elif self.rule == "cubic":
            first, last = np.floor(x) - 1, np.floor(x) + 2
        else:
            x = np.clip(x, 0, length - 1)
            first = np.floor(x)
            last = first + (x - first > 1e-9)
        first, last = np.clip(first, 0, length - 1), np.clip(last, 0, length - 1)
        return first.astype(np.int64), last.astype(np.int64)

    def affine(self) -> tuple[float, float, float]:
        """The tightest window [i/scale + lo, i/scale + hi], measured over positions away from the borders."""
        if self.transform == "align_corners":
            positions, length = np.arange(self.out_length), max(1, round(self.out_length / self.scale))
        else:
            positions, length = np.arange(64, 576), 1 << 30
        first, last = self._extent(positions, length)
        step = 1 / self.scale
        return step, round(float((first - positions * step).min()), 9), round(float((last - positions * step).max()), 9)

    def reads(self, positions: np.ndarray, length: int) -> np.ndarray:
        first, last = self._extent(positions, length)
        index = first[:, None] + np.arange(4)
        return np.unique(index[index <= last[:, None]])


Reader = Taps | Scatter | Sample


# ---- fields --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """Field along one spatial axis: position i sees [start + i*stride, start + i*stride + size - 1]."""
    size: float
    stride: float
    start: float

    @property
    def is_global(self) -> bool:
        return math.isinf(self.size)

    def window(self, step: float, lo: float, hi: float) -> "Axis":
        """The field of an op whose output position i reads input positions [i*step + lo, i*step + hi]."""
        if self.is_global:
            return self
        return Axis(self.size + (hi - lo) * self.stride, self.stride * step, self.start + lo * self.stride)


PIXEL = Axis(1.0, 1.0, 0.0)
WHOLE = Axis(math.inf, 1.0, 0.0)


@dataclass(frozen=True)
class ReceptiveField:
    """Where the positions of a layer look in the model input, per axis (rows, columns).

    `size`, `stride` and `start` are the textbook numbers: position (i, j) sees rows
    start[0] + i*stride[0] ... + size[0] - 1 (and the matching columns) before clipping;
    a global field (size inf) sees the whole input. `box` gives one position's exact box.
    """
    size: tuple[float, float]
    stride: tuple[float, float]
    start: tuple[float, float]
    input_hw: tuple[int, int] | None = None
    layer: str = ""
    _trace: Callable[[int, int], tuple[int, int] | None] | None = field(default=None, compare=False, repr=False)

    @property
    def is_global(self) -> bool:
        return math.isinf(self.size[0]) or math.isinf(self.size[1])

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in model-input pixels, bottom/right exclusive: exactly the pixels that can
        move position (row, col). Models with symbolic shapes get the textbook `cover` instead."""
        traced = [self._trace(0, row), self._trace(1, col)] if self._trace is not None else [None]
        if None in traced:
            return self.cover(row, col)
        (top, bottom), (left, right) = traced
        return top, left, bottom, right

    def cover(self, row: int, col: int, input_hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """The textbook field of position (row, col) clipped to the input: contains `box`, equal away from borders
        on conv/pool paths."""
        input_hw = input_hw or self.input_hw
        if input_hw is None:
            raise ValueError("the model's input size is symbolic; pass input_hw")
        bounds = []
        for axis, index in enumerate((row, col)):
            limit = input_hw[axis]
            if math.isinf(self.size[axis]):
                bounds.append((0, limit))
                continue
            first = self.start[axis] + index * self.stride[axis]
            low, high = math.ceil(first - TOL), math.floor(first + self.size[axis] - 1 + TOL) + 1
            bounds.append((min(max(low, 0), limit), min(max(high, 0), limit)))
        (top, bottom), (left, right) = bounds
        return top, left, bottom, right

    def as_dict(self) -> dict:
        """JSON-ready: a global axis has size null."""
        return {"layer": self.layer, "size": [None if math.isinf(s) else round(s, 4) for s in self.size],
                "stride": [round(s, 4) for s in self.stride], "start": [round(s, 4) for s in self.start],
                "global": self.is_global}


def receptive_fields(model: "Model", skip_gates: bool = False) -> dict[str, ReceptiveField]:
    """The receptive field of every input-dependent tensor of the model, by tensor name.

    With skip_gates, 1x1 branches broadcast onto a map (squeeze-excitation gates) are left
    out of elementwise unions, so a gated map keeps the local field of its main branch.
    """
    walk = _Walk(model, skip_gates)
    input_hw = _hw(model, model.inputs[0].name) if model.inputs else None
    return {name: ReceptiveField((f[0].size, f[1].size), (f[0].stride, f[1].stride), (f[0].start, f[1].start),
                                 input_hw, name, _tracer(walk, name))
            for name, f in walk.fields.items()}


def receptive_field(model: "Model", layer: str, skip_gates: bool = False) -> ReceptiveField:
    """The receptive field of one tensor (a layer name as `onnxplain inspect` lists it)."""
    model.check_names([layer])
    fields = receptive_fields(model, skip_gates)
    if layer not in fields:  # a constant sees no pixel
        return ReceptiveField((0.0, 0.0), (1.0, 1.0), (0.0, 0.0), None, layer)
    return fields[layer]


def _tracer(walk: "_Walk", layer: str) -> Callable[[int, int], tuple[int, int] | None]:
    cache: dict[tuple[int, int], tuple[int, int] | None] = {}

    def trace(axis: int, index: int) -> tuple[int, int] | None:
        if (axis, index) not in cache:
            cache[(axis, index)] = walk.trace(layer, axis, index)
        return cache[(axis, index)]
    return trace


class _Unknown(Exception):
    """A tensor length the exact trace needs is not known (symbolic shapes)."""


class _Walk:
    """One pass over the graph: how every node reads its inputs, and the textbook field of every tensor."""

    def __init__(self, model: "Model", skip_gates: bool):
        self.model = model
        self.input = model.inputs[0].name if model.inputs else ""
        self.fields: dict[str, tuple[Axis, Axis]] = {i.name: (PIXEL, PIXEL) for i in model.inputs}
        self.plans: list[tuple["onnx.NodeProto", str, object]] = []
        for node in model.proto.graph.node:
            live = [name for name in node.input if name in self.fields]
            if not live or node.op_type in BOOKKEEPING_OPS:
                continue
            kind, detail = _plan(model, node, live, skip_gates)
            self.plans.append((node, kind, detail))
            result = self._forward(kind, detail)
            for out in node.output:
                if out:
                    self.fields[out] = result

    def _forward(self, kind: str, detail) -> tuple[Axis, Axis]:
        if kind == "window":
            name, readers = detail
            before = self.fields[name]
            return before[0].window(*readers[0].affine()), before[1].window(*readers[1].affine())
        if kind == "union":
            branches, length = detail
            axes = [self.fields[name] for name, mode in branches]
            return tuple(_union_axis([a[axis] for a in axes], length[axis] if length else None) for axis in (0, 1))
        return WHOLE, WHOLE

    def trace(self, layer: str, axis: int, index: int) -> tuple[int, int] | None:
        """(first, last + 1) of the input pixels along `axis` that position `index` of `layer` reads."""
        try:
            length = self._length(layer, axis)
            masks: dict[str, np.ndarray | None] = {layer: np.arange(length) == index}
            for node, kind, detail in reversed(self.plans):
                outs = [masks[o] for o in node.output if o in masks]
                if outs:
                    self._backward(kind, detail, _merge(outs), masks, axis)
            mask = masks.get(self.input, np.zeros(0, bool))
            if mask is None:
                return 0, self._length(self.input, axis)
            hits = np.flatnonzero(mask)
            return (int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, 0)
        except _Unknown:
            return None

    def _backward(self, kind: str, detail, out: np.ndarray | None, masks: dict, axis: int) -> None:
        """Mark in `masks` the input positions this node reads for the marked output positions (None: all)."""
        if kind == "window":
            name, readers = detail
            if out is not None:
                length = self._length(name, axis)
                marked = np.zeros(length, bool)
                marked[readers[axis].reads(np.flatnonzero(out), length)] = True
                out = marked
            _mark(masks, name, out)
        elif kind == "union":
            for name, mode in detail[0]:
                _mark(masks, name, out if mode == "same" or out is None else np.array([out.any()]))
        elif out is None or out.any():
            for name in detail:
                _mark(masks, name, None)

    def _length(self, name: str, axis: int) -> int:
        hw = _hw(self.model, name)
        if hw is None:
            raise _Unknown(name)
        return hw[axis]


def _merge(masks: list[np.ndarray | None]) -> np.ndarray | None:
    """The union of position masks (None: every position)."""
    if any(m is None for m in masks):
        return None
    merged = masks[0].copy()
    for m in masks[1:]:
        if len(m) != len(merged):
            raise _Unknown("lengths disagree")  # shapes not as inferred: use the textbook field
        merged |= m
    return merged


def _mark(masks: dict, name: str, mask: np.ndarray | None) -> None:
    """Add `mask` to the positions marked on tensor `name`."""
    if name not in masks:
        masks[name] = None if mask is None else mask.copy()
    elif masks[name] is not None:
        masks[name] = None if mask is None else _merge([masks[name], mask])


# ---- one node ------------------------------------------------------------------------------
def _plan(model: "Model", node: "onnx.NodeProto", live: list[str], skip_gates: bool) -> tuple[str, object]:
    """("window", (input, [rows reader, columns reader])), ("union", (branches, out_hw)) or ("global", live)."""
    op = node.op_type
    data = node.input[0]
    if op in WINDOW_OPS:
        if data not in live:
            return "global", live
        if op in ("Resize", "Upsample", "Pad", "Slice") and len(_spatial_axes(model, data) or ()) != 2:
            return _union_plan(model, node, live, skip_gates)  # token sequences: the grid is unchanged
        readers = _readers(model, node)
        return ("window", (data, readers)) if readers else ("global", live)
    if op in GLOBAL_OPS or _mixes_positions(model, node, live):
        return "global", live
    return _union_plan(model, node, live, skip_gates)


def _union_plan(model: "Model", node: "onnx.NodeProto", live: list[str], skip_gates: bool) -> tuple[str, object]:
    """Elementwise ops, Concat and shape ops: every branch at the same position (1x1 branches broadcast)."""
    out_hw = _hw(model, node.output[0])
    branches = []
    for name in live:
        hw = _hw(model, name)
        if hw is not None and out_hw is not None and hw != out_hw:
            if hw != (1, 1):
                return "global", live  # positions are moved or repeated: not a per-position op
            if skip_gates and len(live) > 1:
                continue
            branches.append((name, "broadcast"))
        else:
            branches.append((name, "same"))
    return ("union", (branches, out_hw)) if branches else ("global", live)


def _readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    """Readers for rows and columns, or None where the op cannot be described (the field turns global)."""
    op = node.op_type
    if op in KERNEL_OPS:
        return _kernel_readers(model, node)
    if op == "ConvTranspose":
        return _scatter_readers(model, node)
    if op in ("Resize", "Upsample"):
        return _resize_readers(model, node)
    if op == "Pad":
        return _pad_readers(model, node)
    if op == "Slice":
        return _slice_readers(model, node)
    block = int(attribute(node, "blocksize", 1))
    if op == "SpaceToDepth":
        return [Taps(block, 0, block)] * 2
    return [Sample(float(block), "asymmetric", "floor")] * 2  # DepthToSpace: output i reads i // block


def _kernel(model: "Model", node: "onnx.NodeProto") -> list[int] | None:
    kernel = attribute(node, "kernel_shape")
    if not kernel and len(node.input) > 1:
        weight = constant(model, node.input[3 if node.op_type == "QLinearConv" else 1])
        kernel = list(weight.shape[2:]) if weight is not None else None
    return list(kernel) if kernel and len(kernel) == 2 else None


def _window_geometry(node: "onnx.NodeProto") -> tuple[list[int], list[int], list[int], str]:
    """Strides, dilations, pads and auto_pad of a Conv/pool-like node, with ONNX's defaults."""
    return (attribute(node, "strides") or [1, 1], attribute(node, "dilations") or [1, 1],
            attribute(node, "pads") or [0, 0, 0, 0], attribute(node, "auto_pad", "NOTSET"))


def _kernel_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    kernel = _kernel(model, node)
    if kernel is None:
        return None
    strides, dilations, pads, auto_pad = _window_geometry(node)
    hw = _hw(model, node.input[0])
    readers = []
    for axis in (0, 1):
        k, s, d = kernel[axis], strides[axis], dilations[axis]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            n = hw[axis] if hw else None
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0) if n else max((k - 1) * d + 1 - s, 0)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        else:
            begin = 0 if auto_pad == "VALID" else pads[axis]
        readers.append(Taps(s, -begin, k, d))
    return readers


def _scatter_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    kernel = _kernel(model, node)
    if kernel is None:
        return None
    strides, dilations, pads, auto_pad = _window_geometry(node)
    readers = []
    for axis in (0, 1):
        k, s, d = kernel[axis], strides[axis], dilations[axis]
        begin = 0 if auto_pad == "VALID" else pads[axis]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            total = max((k - 1) * d + 1 - s, 0)
            begin = total - total // 2 if auto_pad == "SAME_UPPER" else total // 2
        readers.append(Scatter(s, begin, k, d))
    return readers


def _resize_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    modern = node.op_type == "Resize" and model.opset >= 11
    mode = attribute(node, "mode", "nearest")
    transform = attribute(node, "coordinate_transformation_mode", "half_pixel" if modern else "asymmetric")
    rule = (attribute(node, "nearest_mode", "round_prefer_floor") if modern else "floor") if mode == "nearest" \
        else mode
    scales = _resize_scales(model, node, modern)
    out_hw = _hw(model, node.output[0])
    if scales is None or transform not in TRANSFORMS or (rule not in NEAREST_RULES and rule not in (
            "linear", "bilinear", "cubic")) or (transform == "align_corners" and out_hw is None):
        return None
    return [Sample(scale, transform, rule, out_hw[axis] if out_hw else None) for axis, scale in enumerate(scales)]


def _resize_scales(model: "Model", node: "onnx.NodeProto", modern: bool) -> list[float] | None:
    """Scale factors along rows and columns, from the scales input or else from the tensor shapes."""
    axes = _spatial_axes(model, node.input[0])
    index = 2 if modern else 1
    scales = constant(model, node.input[index]) if len(node.input) > index and node.input[index] \
        else attribute(node, "scales")
    if scales is not None and axes is not None and len(scales):
        scales = [float(s) for s in np.asarray(scales).flat]
        listed = attribute(node, "axes")
        if listed:
            rank = _rank(model, node.input[0]) or 4
            by_axis = {a % rank: s for a, s in zip(listed, scales)}
            return [by_axis.get(a, 1.0) for a in axes]
        if len(scales) > max(axes):
            return [scales[a] for a in axes]
    before, after = _hw(model, node.input[0]), _hw(model, node.output[0])
    if before and after:
        return [after[0] / before[0], after[1] / before[1]]
    return None


def _pad_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    pads = constant(model, node.input[1]) if len(node.input) > 1 and node.input[1] else attribute(node, "pads")
    axes = _spatial_axes(model, node.input[0])
    rank = _rank(model, node.input[0])
    if pads is None or axes is None or rank is None:
        return None
    pads = [int(p) for p in np.asarray(pads).flat]
    listed = constant(model, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    listed = [int(a) % rank for a in listed.flat] if listed is not None else list(range(len(pads) // 2))
    begins = {a: pads[i] for i, a in enumerate(listed)}
    border = {"constant": "zero", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(
        attribute(node, "mode", "constant"), "zero")
    return [Taps(1, -begins.get(a, 0), 1, 1, border) for a in axes]


def _slice_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    axes = _spatial_axes(model, node.input[0])
    shape = model.tensors[node.input[0]].shape if node.input[0] in model.tensors else None
    if axes is None or shape is None:
        return None

    def read(i: int, name: str) -> list[int] | None:
        if len(node.input) > i and node.input[i]:
            value = constant(model, node.input[i])
            return None if value is None else [int(v) for v in np.asarray(value).flat]
        return attribute(node, name)

    starts, listed, steps = read(1, "starts"), read(3, "axes"), read(4, "steps")
    if starts is None:
        return None
    listed = [a % len(shape) for a in listed] if listed else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    readers = []
    for axis in axes:
        if axis not in listed:
            readers.append(Taps(1, 0))
            continue
        j = listed.index(axis)
        start, step, n = starts[j], steps[j], shape[axis]
        if step <= 0 or (start < 0 and not isinstance(n, int)):
            return None  # a flip or an unknown length: positions no longer map forward
        if start < 0:
            start += n
        if isinstance(n, int):
            start = min(max(start, 0), n)
        readers.append(Taps(step, start))
    return readers


# ---- mixing and unions ---------------------------------------------------------------------
def _mixes_positions(model: "Model", node: "onnx.NodeProto", live: list[str]) -> bool:
    """True when an output position depends on every input position (the field becomes global)."""
    op = node.op_type
    if op == "MatMul":
        info = model.tensors.get(live[0])
        channels_last = info is not None and info.layout in ("tokens", "NHWC")
        return len(live) > 1 or live[0] != node.input[0] or not channels_last
    if op == "Concat" and live == [node.input[-1]] and _spatial_axes(model, node.output[0]) == (1,):
        return False  # a constant class token put in front of a token grid
    if op.startswith("Reduce") or op in AXIS_OPS:
        spatial = set(_spatial_axes(model, node.input[0]) or ())
        return bool(spatial & _op_axes(model, node))
    return False


def _op_axes(model: "Model", node: "onnx.NodeProto") -> set[int]:
    """The tensor axes an axis-taking op works along (all axes when it names none)."""
    rank = _rank(model, node.input[0]) or 4
    op = node.op_type
    if op.startswith("Reduce"):
        axes = attribute(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = constant(model, node.input[1])
            axes = None if value is None else [int(a) for a in value.flat]
        return set(range(rank)) if not axes else {a % rank for a in axes}
    old = model.opset < 13
    default = {"Softmax": 1 if old else -1, "LogSoftmax": 1 if old else -1, "Hardmax": 1 if old else -1,
               "Concat": 1, "LpNormalization": -1}.get(op, 0)
    axis = attribute(node, "axis", default)
    if op == "CumSum":
        value = constant(model, node.input[1]) if len(node.input) > 1 else None
        axis = int(value.flat[0]) if value is not None else 0
    axis %= rank
    if op in ("Softmax", "LogSoftmax", "Hardmax") and old:
        return set(range(axis, rank))  # these opsets flatten everything from `axis` on
    return {axis}


def _union_axis(axes: list[Axis], length: int | None) -> Axis:
    """The smallest field with the largest stride that covers every branch at every position."""
    if len(axes) == 1:
        return axes[0]
    if any(a.is_global for a in axes):
        return WHOLE
    stride = max(a.stride for a in axes)
    if all(a.stride == stride for a in axes):
        start = min(a.start for a in axes)
        return Axis(max(a.start + a.size for a in axes) - start, stride, start)
    if length is None:
        return WHOLE
    ends = [(i, a) for a in axes for i in (0, length - 1)]
    start = min(a.start + i * (a.stride - stride) for i, a in ends)
    end = max(a.start + a.size + i * (a.stride - stride) for i, a in ends)
    return Axis(end - start, stride, start)


# ---- tensor geometry -----------------------------------------------------------------------
def _rank(model: "Model", name: str) -> int | None:
    info = model.tensors.get(name)
    return len(info.shape) if info is not None and info.shape is not None else None


def _spatial_axes(model: "Model", name: str) -> tuple[int, ...] | None:
    """Tensor axes of rows and columns (NCHW unless the layout says otherwise); tokens have one."""
    info = model.tensors.get(name)
    if info is None or info.shape is None:
        return None
    if info.layout == "NHWC":
        return (1, 2)
    if info.layout == "tokens":
        return (1,)
    return (2, 3) if len(info.shape) == 4 else None


def _hw(model: "Model", name: str) -> tuple[int, int] | None:
    """(H, W) of a map, 1x1 maps included; a token grid's size; None when unknown."""
    info = model.tensors.get(name)
    if info is None or info.shape is None:
        return None
    if info.hw is not None:
        return info.hw
    if len(info.shape) == 4:
        h, w = (info.shape[1], info.shape[2]) if info.layout == "NHWC" else (info.shape[2], info.shape[3])
        if isinstance(h, int) and isinstance(w, int):
            return h, w
    return None
