"""What the converter refuses before building: tensor types torch cannot run, node settings an op function
declares it does not handle (`refuses`), walked through every subgraph (If/Loop/Scan bodies) too.

Each check returns reasons as sentences; the module raises UnsupportedModel with the first, `problem` says it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto, numpy_helper

DYNAMIC = object()  # stands for an input whose value is only known at run time

FLOAT8_TYPES = {TensorProto.FLOAT8E4M3FN: torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
                TensorProto.FLOAT8E5M2: torch.float8_e5m2, TensorProto.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz}
# float8 values are only converted (torch has the types but few kernels for them)
FLOAT8_OPS = {"Cast", "CastLike", "Identity", "QuantizeLinear", "DequantizeLinear"}
UNSIGNED_WIDE = {TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64}
# uint16/32/64 values run through these ops only (computed in int64, see ops.common.unsigned_in_int64)
UNSIGNED_OPS = {"Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Sum", "Equal", "Less", "LessOrEqual", "Greater",
                "GreaterOrEqual", "Pow", "TopK", "Cast", "CastLike", "Identity", "QuantizeLinear",
                "DequantizeLinear"}
# ops whose first output has their first input's element type (how a narrow type spreads through a graph),
# and those whose output takes another input's type
TYPE_KEEPING = {"Identity", "Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Sum", "TopK", "Abs", "Neg",
                "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Concat", "Slice", "Gather", "Expand",
                "Tile", "Range"}
TYPE_FROM_INPUT = {"CastLike": 1, "DequantizeLinear": 1, "QuantizeLinear": 2}
RUNNABLE_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                  TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT8,
                  TensorProto.BOOL, *FLOAT8_TYPES, *UNSIGNED_WIDE}
TYPE_ATTRIBUTES = ("to", "dtype", "output_datatype")


def refuses(check: Callable[..., str | None]) -> Callable[[Callable], Callable]:
    """Decorator for an op function: check(inputs, **attrs) names a setting the function does not handle
    (inputs hold the constant tensors, DYNAMIC for run-time values, None for absent ones; output_count the
    outputs the node names), else None."""
    def decorate(fn: Callable) -> Callable:
        fn.refuses = check
        return fn
    return decorate


def walk(graph: onnx.GraphProto, scope: str = "") -> Iterator[tuple[onnx.NodeProto, str, onnx.GraphProto]]:
    """(node, its label, the graph holding it) for every node, inside If/Loop/Scan bodies too; labels of
    inner nodes name their path ('If_0/then_branch/Nms')."""
    for index, node in enumerate(graph.node):
        label = scope + (node.name or f"#{index} -> {node.output[0] if node.output else ''}")
        yield node, label, graph
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from walk(attr.g, f"{label}/{attr.name}/")
            elif attr.type == AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from walk(sub, f"{label}/{attr.name}[{i}]/")


def type_name(data_type: int) -> str:
    return TensorProto.DataType.Name(data_type).lower()


def value_problem(value: onnx.ValueInfoProto, role: str) -> str | None:
    """Why a graph input or output cannot be a torch tensor (sequence, map, optional, string...), or None."""
    kind = value.type.WhichOneof("value")
    if kind is None:
        return None
    if kind != "tensor_type":
        return f"{role} '{value.name}' is a {kind.removesuffix('_type')}, and the converter runs tensors only"
    return dtype_problem(value.type.tensor_type.elem_type, f"{role} '{value.name}'")


def dtype_problem(data_type: int, what: str) -> str | None:
    """Why tensors of an ONNX data type cannot run (None when they can, or when the type is unset)."""
    if data_type == TensorProto.UNDEFINED or data_type in RUNNABLE_TYPES:
        return None
    return f"{what} is {type_name(data_type)}, which torch cannot compute with"


def type_problems(model: onnx.ModelProto) -> list[str]:
    """Reasons the model's tensor types cannot run: inputs, outputs, weights, constants, casts, and float8 or
    uint16/32/64 values reaching ops that do not take them."""
    graph = model.graph
    found = [p for v in graph.input for p in [value_problem(v, "input")] if p]
    found += [p for v in graph.output for p in [value_problem(v, "output")] if p]
    for node, label, _ in walk(graph):
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                found.append(dtype_problem(attr.t.data_type, f"constant '{node.output[0]}'"))
            elif attr.type == AttributeProto.INT and attr.name in TYPE_ATTRIBUTES:
                found.append(dtype_problem(attr.i, f"the {node.op_type} output of node '{label}'"))
            elif attr.type == AttributeProto.GRAPHS:
                found.append(f"node '{label}' ({node.op_type}) holds a list of subgraphs (attribute "
                             f"{attr.name}), which the converter does not run")
    for sub in graphs(graph):
        found += [dtype_problem(t.data_type, f"weight '{t.name}'") for t in sub.initializer]
    found += consumer_problems(graph, FLOAT8_TYPES, FLOAT8_OPS, "float8 values, which torch only converts")
    found += consumer_problems(graph, UNSIGNED_WIDE, UNSIGNED_OPS,
                               "{type} values, which the converter computes with only in arithmetic, comparisons, "
                               "Max/Min, TopK, casts and quantisation")
    return [p for p in found if p]


def graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph nested in it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs):
                yield from graphs(sub)


def typed_names(graph: onnx.GraphProto, types: set[int] | dict) -> dict[str, int]:
    """Tensor names (in every subgraph) whose element type is one of `types`, with that type: inputs,
    weights, constants, cast outputs, and what TYPE_KEEPING ops make of them."""
    typed: dict[str, int] = {}
    for sub in graphs(graph):
        typed.update((v.name, v.type.tensor_type.elem_type) for v in list(sub.input) + list(sub.value_info)
                     if v.type.tensor_type.elem_type in types)
        typed.update((t.name, t.data_type) for t in sub.initializer if t.data_type in types)
    for node, _, _ in walk(graph):
        produced = None
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type in types:
                produced = attr.t.data_type
            elif attr.type == AttributeProto.INT and attr.name in TYPE_ATTRIBUTES and attr.i in types:
                produced = attr.i
        source = TYPE_FROM_INPUT.get(node.op_type, 0 if node.op_type in TYPE_KEEPING else None)
        if source is not None and len(node.input) > source and node.input[source] in typed:
            produced = typed[node.input[source]]
        if produced is not None and node.output and node.output[0]:
            typed[node.output[0]] = produced
    return typed


def consumer_problems(graph: onnx.GraphProto, types: set[int] | dict, allowed: set[str], what: str) -> list[str]:
    """A reason per node outside `allowed` that reads a value of one of `types` (`what` may name {type})."""
    typed = typed_names(graph, types)
    found = []
    for node, label, _ in walk(graph):
        read = next((typed[name] for name in node.input if name in typed), None)
        if read is not None and node.op_type not in allowed:
            found.append(f"node '{label}' ({node.op_type}) computes on {what.format(type=type_name(read))}")
    return found


def holds_unsigned_wide(model: onnx.ModelProto) -> bool:
    """Whether any tensor of the model (in any subgraph) is uint16/32/64, so its ops need the int64 path."""
    return bool(typed_names(model.graph, UNSIGNED_WIDE)) or any(
        v.type.tensor_type.elem_type in UNSIGNED_WIDE for sub in graphs(model.graph) for v in sub.output)


def setting_problems(model: onnx.ModelProto, lookup: Callable[[onnx.NodeProto], Callable | None]) -> list[str]:
    """Reasons from the op functions' `refuses` checks, node by node (constants: initializers and
    Constant nodes of the main graph; everything else counts as DYNAMIC)."""
    constants: dict[str, Any] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL and tensor.data_type in RUNNABLE_TYPES:
            constants[tensor.name] = numpy_helper.to_array(tensor)
    found = []
    for node, label, _ in walk(model.graph):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == AttributeProto.TENSOR:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        fn = lookup(node)
        check = getattr(fn, "refuses", None)
        if check is None:
            continue
        inputs = [None if not name else known_value(constants.get(name)) for name in node.input]
        outputs = max((i + 1 for i, name in enumerate(node.output) if name), default=0)
        reason = check(inputs, output_count=outputs, **plain_attributes(node))
        if reason:
            found.append(f"{node.op_type} node '{label}' {reason}")
    return found


def known_value(array: np.ndarray | None) -> Any:
    """A constant as a torch tensor; DYNAMIC for a run-time value or one torch cannot hold (strings, float8)."""
    if array is None or array.dtype == object or array.dtype.kind in "SUV" or array.dtype.name.startswith("float8"):
        return DYNAMIC
    return torch.from_numpy(np.array(array))


def plain_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's non-graph attributes as Python values (strings decoded)."""
    values = {}
    for attr in node.attribute:
        if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            continue
        value = onnx.helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values


def refusals(model: onnx.ModelProto) -> list[str]:
    """Every reason found by the type and setting checks (empty when the model can be built)."""
    from .graph import opset_versions
    from .registry import DEFAULT_DOMAINS, load_ops, lookup
    load_ops()
    versions = opset_versions(model)

    def function_of(node: onnx.NodeProto) -> Callable | None:
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        return lookup(node.op_type, versions.get(domain, 1), domain)
    return type_problems(model) + setting_problems(model, function_of)


def refusal_message(reasons: list[str]) -> str:
    """One sentence naming the first reason (and how many more there are)."""
    more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
    return f"The converter cannot run this model: {reasons[0]}{more}."
