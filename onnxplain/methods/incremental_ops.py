"""The spatially local ONNX ops incremental occlusion can recompute on a crop, as torch functions.

Each supported node becomes a Step: a window op (Conv, MaxPool, AveragePool, Pad) reads a kernel-sized
neighbourhood of its padded input; a pointwise op (activations, arithmetic with per-channel constants,
BatchNormalization, Concat over channels) reads the same positions. Anything else (attention, global
pooling, flatten, resize, reductions over positions) returns None: it ends the incremental part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..graph import attr, constant

if TYPE_CHECKING:
    import onnx
    import torch

    from ..model import Model

UNARY = {
    "Relu": lambda F, t, n: F.relu,
    "Sigmoid": lambda F, t, n: t.sigmoid,
    "Tanh": lambda F, t, n: t.tanh,
    "Erf": lambda F, t, n: t.erf,
    "Exp": lambda F, t, n: t.exp,
    "Abs": lambda F, t, n: t.abs,
    "Neg": lambda F, t, n: t.neg,
    "Sqrt": lambda F, t, n: t.sqrt,
    "Reciprocal": lambda F, t, n: t.reciprocal,
    "Identity": lambda F, t, n: (lambda x: x),
    "Softplus": lambda F, t, n: F.softplus,
    "HardSwish": lambda F, t, n: F.hardswish,
    "LeakyRelu": lambda F, t, n: (lambda x, a=float(attr(n, "alpha", 0.01)): F.leaky_relu(x, a)),
    "Elu": lambda F, t, n: (lambda x, a=float(attr(n, "alpha", 1.0)): F.elu(x, a)),
    "HardSigmoid": lambda F, t, n: (lambda x, a=float(attr(n, "alpha", 0.2)), b=float(attr(n, "beta", 0.5)):
                                    (a * x + b).clamp(0, 1)),
}
BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow"}


@dataclass
class Step:
    """One node of the incremental part: its dirty (image-derived) inputs, its op on crops, its geometry.

    Window steps read input rows `o*stride - pads[0] + [0, (kernel-1)*dilation]` for output row `o` (columns
    alike); `fn` runs on crops of the input already padded with `pad_value`. Pointwise steps have kernel 1.
    """
    output: str
    op_type: str
    inputs: tuple[str, ...]
    fn: Callable
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    pad_value: float = 0.0
    macs: float = 1.0                                # multiply-adds per output element (the cost model's unit)

    @property
    def window(self) -> bool:
        return self.kernel != (1, 1) or self.stride != (1, 1) or any(self.pads)


def make_step(model: "Model", node: "onnx.NodeProto", dirty: set[str]) -> Step | None:
    """The Step for `node` (some of whose inputs are dirty), or None when the op is not spatially local."""
    import torch
    import torch.nn.functional as F
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or len([o for o in node.output if o]) != 1:
        return None
    out = node.output[0]
    if _map_shape(model, out) is None or any(_map_shape(model, n) is None for n in node.input if n in dirty):
        return None
    if op == "Conv":
        return _conv(model, node, torch, F)
    if op in ("MaxPool", "AveragePool"):
        return _pool(model, node, F)
    if op == "Pad":
        return _pad(model, node)
    if op in UNARY and node.input[0] in dirty:
        return Step(out, op, (node.input[0],), UNARY[op](F, torch, node))
    if op == "Clip":
        return _clip(model, node, torch)
    if op in BINARY or op == "PRelu":
        return _binary(model, node, dirty, torch)
    if op == "BatchNormalization":
        return _batchnorm(model, node, torch)
    if op == "Concat" and int(attr(node, "axis", 0)) in (1, -3) and all(n in dirty for n in node.input):
        return Step(out, op, tuple(node.input), lambda *xs: torch.cat(xs, 1))
    return None


def _map_shape(model: "Model", name: str) -> tuple[int, int, int] | None:
    """(C, H, W) of a static 4-D tensor, else None."""
    info = model.tensors.get(name)
    shape = info.shape if info is not None else None
    if not shape or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
        return None
    return tuple(shape[1:])


def map_shape(model: "Model", name: str) -> tuple[int, int, int]:
    """(C, H, W) of a tensor make_step accepted."""
    return _map_shape(model, name)


def _geometry(model: "Model", node: "onnx.NodeProto", kernel: list[int]):
    """(strides, dilations, pads top/left/bottom/right) with auto_pad resolved from the input size."""
    strides = list(attr(node, "strides") or [1, 1])
    dilations = list(attr(node, "dilations") or [1, 1])
    pads = list(attr(node, "pads") or [0, 0, 0, 0])
    auto = attr(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        _, h, w = _map_shape(model, node.input[0])
        pads = [0, 0, 0, 0]
        for axis, n in enumerate((h, w)):
            total = max((math.ceil(n / strides[axis]) - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis]
                        + 1 - n, 0)
            small, large = total // 2, total - total // 2
            pads[axis], pads[axis + 2] = (small, large) if auto == "SAME_UPPER" else (large, small)
    return tuple(strides), tuple(dilations), (pads[0], pads[1], pads[2], pads[3])


def _conv(model, node, torch, F) -> Step | None:
    weight = constant(model, node.input[1])
    bias = constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if weight is None or weight.ndim != 4 or (len(node.input) > 2 and node.input[2] and bias is None):
        return None
    groups = int(attr(node, "group", 1))
    kernel = list(weight.shape[2:])
    strides, dilations, pads = _geometry(model, node, kernel)
    w = torch.from_numpy(np.array(weight, np.float32))
    b = torch.from_numpy(np.array(bias, np.float32)) if bias is not None else None

    def conv(x):
        return F.conv2d(x, w, b, strides, 0, dilations, groups)
    return Step(node.output[0], "Conv", (node.input[0],), conv, tuple(kernel), strides, dilations, pads,
                macs=float(weight.shape[1] * kernel[0] * kernel[1]))


def _pool(model, node, F) -> Step | None:
    kernel = list(attr(node, "kernel_shape") or [])
    if len(kernel) != 2 or (node.op_type == "MaxPool" and int(attr(node, "storage_order", 0))):
        return None
    strides, dilations, pads = _geometry(model, node, kernel)
    ceil = bool(attr(node, "ceil_mode", 0))
    if node.op_type == "AveragePool":
        if ceil or dilations != (1, 1) or (any(pads) and not int(attr(node, "count_include_pad", 0))):
            return None
        return Step(node.output[0], "AveragePool", (node.input[0],), lambda x: F.avg_pool2d(x, kernel, strides),
                    tuple(kernel), strides, dilations, pads, 0.0, macs=float(kernel[0] * kernel[1]))
    return Step(node.output[0], "MaxPool", (node.input[0],),
                lambda x: F.max_pool2d(x, kernel, strides, 0, dilations), tuple(kernel), strides, dilations,
                pads, -math.inf, macs=float(kernel[0] * kernel[1]))


def _pad(model, node) -> Step | None:
    mode = attr(node, "mode", "constant")
    pads = attr(node, "pads") if model.opset < 11 else constant(model, node.input[1]) \
        if len(node.input) > 1 else None
    value = attr(node, "value", 0.0) if model.opset < 11 else (
        constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else 0.0)
    if mode != "constant" or pads is None or value is None or (len(node.input) > 3 and node.input[3]):
        return None
    pads = [int(p) for p in np.ravel(pads)]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None
    return Step(node.output[0], "Pad", (node.input[0],), lambda x: x, pads=(pads[2], pads[3], pads[6], pads[7]),
                pad_value=float(np.ravel(value)[0]) if np.size(value) else 0.0)


def _local_constant(model, name: str, torch):
    """A constant operand as a torch tensor, if it broadcasts per channel (no spatial extent), else None."""
    value = constant(model, name)
    if value is None or value.ndim > 4 or not (value.size == 1 or (value.ndim >= 3 and value.shape[-2:] == (1, 1))):
        return None
    return torch.from_numpy(np.array(value, np.float32))


def _clip(model, node, torch) -> Step | None:
    if model.opset < 11:
        low, high = attr(node, "min"), attr(node, "max")
    else:
        names = [node.input[i] if len(node.input) > i else "" for i in (1, 2)]
        bounds = [constant(model, n) if n else None for n in names]
        if any(n and b is None for n, b in zip(names, bounds)):
            return None
        low, high = (None if b is None else float(np.ravel(b)[0]) for b in bounds)
    return Step(node.output[0], "Clip", (node.input[0],), lambda x: torch.clamp(x, low, high))


def _binary(model, node, dirty: set[str], torch) -> Step | None:
    names = list(node.input[:2])
    live = tuple(n for n in names if n in dirty)
    operands = {n: _local_constant(model, n, torch) for n in names if n not in dirty}
    if any(v is None for v in operands.values()):
        return None
    name = BINARY.get(node.op_type)
    if node.op_type == "PRelu":
        if names[0] not in dirty or names[1] in dirty:
            return None
        slope = operands[names[1]]
        return Step(node.output[0], "PRelu", live, lambda x: torch.where(x >= 0, x, x * slope))
    fn = getattr(torch, name)

    def binary(*xs):
        given = iter(xs)
        args = [next(given) if n in dirty else operands[n] for n in names]
        return fn(args[0], args[1])
    return Step(node.output[0], node.op_type, live, binary)


def _batchnorm(model, node, torch) -> Step | None:
    scale, bias, mean, var = (constant(model, n) for n in node.input[1:5])
    if any(v is None for v in (scale, bias, mean, var)):
        return None
    eps = float(attr(node, "epsilon", 1e-5))
    a = (scale / np.sqrt(var + eps)).astype(np.float32)
    b = (bias - mean * a).astype(np.float32)
    ta, tb = torch.from_numpy(a[:, None, None].copy()), torch.from_numpy(b[:, None, None].copy())
    return Step(node.output[0], "BatchNormalization", (node.input[0],), lambda x: x * ta + tb)
