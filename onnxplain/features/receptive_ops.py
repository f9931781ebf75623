"""What each ONNX op does to receptive fields: a window reader per axis, a union of branches, or global.

Readers come from the op's attributes and constant inputs (graph.attr, graph.constant); the walk in
receptive.py applies them.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..graph import attr, constant
from .readers import KERNEL_OPS, WINDOW_OPS, GLOBAL_OPS, AXIS_OPS, NEAREST_RULES, TRANSFORMS, Taps, Scatter, Sample, Reader

if TYPE_CHECKING:
    import onnx

    from ..model import Model


# ---- one node ------------------------------------------------------------------------------
def node_plan(model: "Model", node: "onnx.NodeProto", live: list[str], skip_gates: bool) -> tuple[str, object]:
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
    out_hw = map_hw(model, node.output[0])
    branches = []
    for name in live:
        hw = map_hw(model, name)
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
    block = int(attr(node, "blocksize", 1))
    if op == "SpaceToDepth":
        return [Taps(block, 0, block)] * 2
    return [Sample(float(block), "asymmetric", "floor")] * 2  # DepthToSpace: output i reads i // block


def _kernel(model: "Model", node: "onnx.NodeProto") -> list[int] | None:
    kernel = attr(node, "kernel_shape")
    if not kernel and len(node.input) > 1:
        weight = constant(model, node.input[3 if node.op_type == "QLinearConv" else 1])
        kernel = list(weight.shape[2:]) if weight is not None else None
    return list(kernel) if kernel and len(kernel) == 2 else None


def _window_geometry(node: "onnx.NodeProto") -> tuple[list[int], list[int], list[int], str]:
    """Strides, dilations, pads and auto_pad of a Conv/pool-like node, with ONNX's defaults."""
    return (attr(node, "strides") or [1, 1], attr(node, "dilations") or [1, 1],
            attr(node, "pads") or [0, 0, 0, 0], attr(node, "auto_pad", "NOTSET"))


def _kernel_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    kernel = _kernel(model, node)
    if kernel is None:
        return None
    strides, dilations, pads, auto_pad = _window_geometry(node)
    hw = map_hw(model, node.input[0])
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
    mode = attr(node, "mode", "nearest")
    transform = attr(node, "coordinate_transformation_mode", "half_pixel" if modern else "asymmetric")
    rule = (attr(node, "nearest_mode", "round_prefer_floor") if modern else "floor") if mode == "nearest" \
        else mode
    scales = _resize_scales(model, node, modern)
    out_hw = map_hw(model, node.output[0])
    if scales is None or transform not in TRANSFORMS or (rule not in NEAREST_RULES and rule not in (
            "linear", "bilinear", "cubic")) or (transform == "align_corners" and out_hw is None):
        return None
    return [Sample(scale, transform, rule, out_hw[axis] if out_hw else None) for axis, scale in enumerate(scales)]


def _resize_scales(model: "Model", node: "onnx.NodeProto", modern: bool) -> list[float] | None:
    """Scale factors along rows and columns, from the scales input or else from the tensor shapes."""
    axes = _spatial_axes(model, node.input[0])
    index = 2 if modern else 1
    scales = constant(model, node.input[index]) if len(node.input) > index and node.input[index] \
        else attr(node, "scales")
    if scales is not None and axes is not None and len(scales):
        scales = [float(s) for s in np.asarray(scales).flat]
        listed = attr(node, "axes")
        if listed:
            rank = _rank(model, node.input[0]) or 4
            by_axis = {a % rank: s for a, s in zip(listed, scales)}
            return [by_axis.get(a, 1.0) for a in axes]
        if len(scales) > max(axes):
            return [scales[a] for a in axes]
    before, after = map_hw(model, node.input[0]), map_hw(model, node.output[0])
    if before and after:
        return [after[0] / before[0], after[1] / before[1]]
    return None


def _pad_readers(model: "Model", node: "onnx.NodeProto") -> list[Reader] | None:
    pads = constant(model, node.input[1]) if len(node.input) > 1 and node.input[1] else attr(node, "pads")
    axes = _spatial_axes(model, node.input[0])
    rank = _rank(model, node.input[0])
    if pads is None or axes is None or rank is None:
        return None
    pads = [int(p) for p in np.asarray(pads).flat]
    listed = constant(model, node.input[3]) if len(node.input) > 3 and node.input[3] else None
    listed = [int(a) % rank for a in listed.flat] if listed is not None else list(range(len(pads) // 2))
    begins = {a: pads[i] for i, a in enumerate(listed)}
    border = {"constant": "zero", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}.get(
        attr(node, "mode", "constant"), "zero")
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
        return attr(node, name)

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
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            value = constant(model, node.input[1])
            axes = None if value is None else [int(a) for a in value.flat]
        return set(range(rank)) if not axes else {a % rank for a in axes}
    old = model.opset < 13
    default = {"Softmax": 1 if old else -1, "LogSoftmax": 1 if old else -1, "Hardmax": 1 if old else -1,
               "Concat": 1, "LpNormalization": -1}.get(op, 0)
    axis = attr(node, "axis", default)
    if op == "CumSum":
        value = constant(model, node.input[1]) if len(node.input) > 1 else None
        axis = int(value.flat[0]) if value is not None else 0
    axis %= rank
    if op in ("Softmax", "LogSoftmax", "Hardmax") and old:
        return set(range(axis, rank))  # these opsets flatten everything from `axis` on
    return {axis}


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


def map_hw(model: "Model", name: str) -> tuple[int, int] | None:
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
