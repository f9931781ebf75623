"""Per-op rules of the row pruning pass (rowprune.py): for an op whose output is wanted only on some rows of
one axis, the axis each input must be cut on (None: the input is read whole), or None when rows of the output
may need other rows of an input. Every rule is exact: row r of the output depends only on row r of the inputs
it cuts."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx_ir as ir

Dim = int | tuple | None  # an int, ("N", k) for k times the batch, or None when unknown
Shape = Callable[[ir.Value | None], "tuple[Dim, ...] | None"]
Const = Callable[[ir.Value | None], "np.ndarray | None"]
Found = "tuple[list[int | None], dict[int, np.ndarray]] | None"

ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Mod", "Where", "PRelu",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not",
    "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu",
    "Selu", "Celu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "ThresholdedRelu",
    "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf", "Identity", "Cast", "Clip",
}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"}


def rule(node: ir.Node, axis: int, shape: Shape, const: Const, count: int) -> Found:
    """The input axes (and replaced constant inputs) for computing `count` rows of `axis` of node's output."""
    out = shape(node.outputs[0])
    if out is None or not isinstance(out[axis], int):
        return None
    op = node.op_type
    if op in ELEMENTWISE:
        return _broadcast(node.inputs, axis, out, shape)
    handler = RULES.get(op)
    return handler(node, axis, out, shape, const, count) if handler else None


def _broadcast(inputs, axis: int, out: tuple, shape: Shape, allowed=None) -> Found:
    """Inputs broadcast against the output: cut those holding the axis at full size, read the others whole."""
    axes: list[int | None] = []
    for value in inputs:
        if value is None:
            axes.append(None)
            continue
        dims = shape(value)
        if dims is None:
            return None
        aligned = axis - (len(out) - len(dims))
        if aligned < 0 or dims[aligned] == 1:
            axes.append(None)
        elif dims[aligned] == out[axis] and (allowed is None or aligned in allowed(len(dims))):
            axes.append(aligned)
        else:
            return None
    return axes, {}


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _matmul(node, axis, out, shape, const, count) -> Found:
    a, b = shape(node.inputs[0]), shape(node.inputs[1])
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    if axis == len(out) - 2:  # A's rows: B (attention's keys or values, a weight) is read whole
        return [len(a) - 2, None], {}
    if axis < len(out) - 2:  # a batch axis broadcasts like an elementwise op
        return _broadcast(node.inputs, axis, out, shape, allowed=lambda rank: range(rank - 2))
    return None


def _gemm(node, axis, out, shape, const, count) -> Found:
    if axis != 0:
        return None
    axes: list[int | None] = [1 if _attr(node, "transA", 0) else 0, None]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        c = shape(node.inputs[2])
        if c is None:
            return None
        if len(c) == 2 and c[0] == out[0]:
            axes.append(0)
        elif len(c) < 2 or c[0] == 1:
            axes.append(None)
        else:
            return None
    return axes, {}


def _transpose(node, axis, out, shape, const, count) -> Found:
    perm = _attr(node, "perm", None)
    perm = list(range(len(out)))[::-1] if perm is None else list(perm)
    return [perm[axis]], {}


def _softmax(node, axis, out, shape, const, count) -> Found:
    return ([axis], {}) if _attr(node, "axis", -1) % len(out) != axis else None


def _layer_norm(node, axis, out, shape, const, count) -> Found:
    if axis >= _attr(node, "axis", -1) % len(out):
        return None
    return [axis] + [None] * (len(node.inputs) - 1), {}


def _reduce(node, axis, out, shape, const, count) -> Found:
    dims = shape(node.inputs[0])
    axes = _attr(node, "axes", None)
    if axes is None and len(node.inputs) > 1:
        axes = const(node.inputs[1])
    if dims is None or axes is None or len(axes) == 0:
        return None
    axes = {int(a) % len(dims) for a in np.asarray(axes).reshape(-1)}
    kept = list(range(len(dims))) if _attr(node, "keepdims", 1) else [i for i in range(len(dims)) if i not in axes]
    source = kept[axis]
    return ([source] + [None] * (len(node.inputs) - 1), {}) if source not in axes else None


def _gather(node, axis, out, shape, const, count) -> Found:
    data, index = shape(node.inputs[0]), shape(node.inputs[1])
    if data is None or index is None:
        return None
    g = _attr(node, "axis", 0) % len(data)
    if axis < g:
        return [axis, None], {}
    if axis >= g + len(index):
        return [axis - len(index) + 1, None], {}
    return None


def _squeeze(node, axis, out, shape, const, count) -> Found:
    dims = shape(node.inputs[0])
    axes = const(node.inputs[1]) if len(node.inputs) > 1 else None
    if dims is None or axes is None:
        return None
    if node.op_type == "Squeeze":
        gone = {int(a) % len(dims) for a in axes.reshape(-1)}
        return [[i for i in range(len(dims)) if i not in gone][axis], None], {}
    added = {int(a) % len(out) for a in axes.reshape(-1)}
    return None if axis in added else ([axis - sum(a < axis for a in added), None], {})


def _slice(node, axis, out, shape, const, count) -> Found:
    dims = shape(node.inputs[0])
    axes = const(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    starts = const(node.inputs[1])
    if dims is None or starts is None or (axes is None and len(node.inputs) > 3 and node.inputs[3] is not None):
        return None
    axes = range(len(starts)) if axes is None else [int(a) % len(dims) for a in axes.reshape(-1)]
    return None if axis in axes else ([axis] + [None] * (len(node.inputs) - 1), {})


def _concat(node, axis, out, shape, const, count) -> Found:
    if _attr(node, "axis", 0) % len(out) == axis:
        return None
    if any(v is None or shape(v) is None or shape(v)[axis] != out[axis] for v in node.inputs):
        return None
    return [axis] * len(node.inputs), {}


def _reshape(node, axis, out, shape, const, count) -> Found:
    """Reshape keeping the axis whole, with the same dims before it: the new shape is a constant (the original
    is often computed from the Shape of the whole tensor), the axis cut to `count` and batch dims copied (0)."""
    dims = shape(node.inputs[0])
    if dims is None:
        return None
    copy = not _attr(node, "allowzero", 0)  # 0 copies the input's dim (else it is a literal zero)
    size = out[axis]
    for a, d in enumerate(dims):
        before, after = _product(dims[:a]), _product(dims[a + 1:])
        if d == size and before is not None and after is not None and before == _product(out[:axis]) \
                and after == _product(out[axis + 1:]):
            break
    else:
        return None
    new, open_dims = [], 0
    for i, d in enumerate(out):
        if i == axis:
            new.append(count)
        elif isinstance(d, int):
            new.append(d)
        elif copy and i < len(dims) and i != a and dims[i] == d:
            new.append(0)
        else:
            new.append(-1)
            open_dims += 1
    if open_dims > 1:
        return None
    return [a, None], {1: np.array(new, np.int64)}


def _product(dims) -> tuple[int, int] | None:
    """(integer factor, power of the batch) of a product of dims; None when one is unknown."""
    factor, power = 1, 0
    for d in dims:
        if isinstance(d, int):
            factor *= d
        elif isinstance(d, tuple):
            factor, power = factor * d[1], power + 1
        else:
            return None
    return factor, power


RULES = {"MatMul": _matmul, "Gemm": _gemm, "Transpose": _transpose, "Softmax": _softmax, "LogSoftmax": _softmax,
         "Hardmax": _softmax, "LayerNormalization": _layer_norm, "Gather": _gather, "Squeeze": _squeeze,
         "Unsqueeze": _squeeze, "Concat": _concat, "Slice": _slice, "Reshape": _reshape, **{op: _reduce for op in REDUCE}}
