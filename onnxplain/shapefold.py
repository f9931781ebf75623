"""Folding a graph's shape arithmetic into constants once shape inference knows the shapes it reads: Shape of
a static value, then the small integer ops on it (Gather, Concat, Div, Mod, Cast, ...), evaluated in numpy.
onnx's data propagation stops at Div and Mod, so a Reshape whose target the legacy exporter computes with them
keeps unknown dims until these become constants (rowshapes.py)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

MAX_ELEMENTS = 64  # larger results are not shape arithmetic: left alone

BINARY: dict[str, Callable] = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def fold_shapes(model: onnx.ModelProto) -> bool:
    """Replace, in place, each node whose output the inferred shapes and small integer constants decide by a
    Constant node; whether any node was replaced."""
    static = {v.name: _static(v) for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if _small_int(t.dims, t.data_type)}
    nodes, changed = [], False
    for node in model.graph.node:
        result = _evaluate(node, values, static)
        if result is None or result.size > MAX_ELEMENTS:
            nodes.append(node)
            continue
        values[node.output[0]] = result
        if node.op_type != "Constant":
            changed = True
            node = onnx.helper.make_node("Constant", [], [node.output[0]], value=numpy_helper.from_array(result))
        nodes.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed


def _evaluate(node: onnx.NodeProto, values: dict[str, np.ndarray], static: dict) -> np.ndarray | None:
    """The node's one output when its inputs are known values (or, for Shape, a static shape); else None."""
    if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Constant":
        value = attrs.get("value")
        if value is None:
            ints = attrs.get("value_int", attrs.get("value_ints"))
            return None if ints is None else np.array(ints, np.int64)
        return numpy_helper.to_array(value) if _small_int(value.dims, value.data_type) else None
    if node.op_type == "Shape":
        dims = static.get(node.input[0])
        return None if dims is None else np.array(dims[attrs.get("start", 0):attrs.get("end", None)], np.int64)
    args = [values.get(name) if name else None for name in node.input]
    if not args or args[0] is None or any(a is None for a, name in zip(args, node.input) if name):
        return None
    try:
        return _compute(node.op_type, args, attrs)
    except (ValueError, IndexError, TypeError, ZeroDivisionError, FloatingPointError):
        return None


def _compute(op: str, args: list, attrs: dict) -> np.ndarray | None:
    """One op of shape arithmetic in numpy, with ONNX's semantics on these small arrays."""
    x = args[0]
    if op == "Identity":
        return x
    if op in BINARY:
        return BINARY[op](x, args[1]).astype(x.dtype)
    if op == "Div":
        return (np.trunc(x / args[1]) if x.dtype.kind in "iu" else x / args[1]).astype(x.dtype)
    if op == "Mod":
        return (np.fmod if attrs.get("fmod") else np.mod)(x, args[1]).astype(x.dtype)
    if op == "Cast":
        return x.astype(onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Gather":
        return np.take(x, args[1], axis=attrs.get("axis", 0))
    if op == "Concat":
        return np.concatenate(args, axis=attrs["axis"])
    if op in ("Unsqueeze", "Squeeze"):
        axes = args[1] if len(args) > 1 and args[1] is not None else attrs.get("axes")
        if op == "Squeeze":
            return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in np.ravel(axes)))
        rank = x.ndim + len(np.ravel(axes))
        for axis in sorted(int(a) % rank for a in np.ravel(axes)):
            x = np.expand_dims(x, axis)
        return x
    if op == "Slice":
        starts, ends = args[1], args[2]
        axes = args[3] if len(args) > 3 and args[3] is not None else range(len(starts))
        steps = args[4] if len(args) > 4 and args[4] is not None else [1] * len(starts)
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps):
            index[int(axis)] = slice(int(start), int(end), int(step))
        return x[tuple(index)]
    return None


def _static(value: onnx.ValueInfoProto) -> list[int] | None:
    tensor = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return None if None in dims else dims


def _small_int(dims, data_type: int) -> bool:
    """Whether a tensor of `dims` and `data_type` is a small integer array (a shape constant)."""
    kind = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).kind if data_type else "?"
    return kind in "iu" and int(np.prod(dims, dtype=np.int64)) <= MAX_ELEMENTS
