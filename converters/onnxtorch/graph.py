"""Reading an ONNX model for the converter: loading, opsets, op support, precision, attributes, weights."""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import AttributeProto, TensorProto, numpy_helper
from onnx.external_data_helper import uses_external_data

from .checks import TYPE_ATTRIBUTES, graphs, typed_names, walk
from .errors import UnsupportedModel
from .registry import DEFAULT_DOMAINS, load_ops, lookup

HALF_TYPES = {TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16"}
# ops exact in half precision (conversions and selections): half values may run through them
HALF_OPS = {"Cast", "CastLike", "Identity", "Max", "Min", "Range", "DequantizeLinear"}


@dataclass(frozen=True)
class NodeInfo:
    """What the converter tells about the node that produces a tensor."""

    op_type: str
    name: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    index: int


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto, *, external_data: bool = True) -> onnx.ModelProto:
    """A ModelProto from a path (external data read from beside it), serialized bytes, or a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(os.fspath(model), load_external_data=external_data)


def opset_versions(model: onnx.ModelProto) -> dict[str, int]:
    """Opset version per domain, with the default domain under ''."""
    versions = {}
    for imp in model.opset_import:
        versions["" if imp.domain in DEFAULT_DOMAINS else imp.domain] = imp.version
    return versions


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or a stand-in naming its position and first output when it has none."""
    return node.name or f"#{index} -> {node.output[0] if node.output else ''}"


def missing_ops(model: onnx.ModelProto) -> list[tuple[str, int, str]]:
    """(op_type, opset, node name) for every node whose op the registry lacks (empty when convertible),
    inside If/Loop/Scan bodies too (inner nodes named by their path)."""
    load_ops()
    versions = opset_versions(model)
    missing = []
    for node, label, _ in walk(model.graph):
        domain = "" if node.domain in DEFAULT_DOMAINS else node.domain
        opset = versions.get(domain, 1)
        if lookup(node.op_type, opset, domain) is None:
            op = node.op_type if not domain else f"{domain}.{node.op_type}"
            missing.append((op, opset, label))
    return missing


def has_half(model: onnx.ModelProto) -> bool:
    """Whether any input, output, weight, constant or cast of the model (subgraphs included) is
    float16/bfloat16."""
    return bool(typed_names(model.graph, HALF_TYPES)) or any(
        v.type.tensor_type.elem_type in HALF_TYPES for sub in graphs(model.graph) for v in sub.output)


def upcast_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float32 copy of a float16/bfloat16 model: weights, constants, casts, dtype attributes and declared
    tensor types, in If/Loop/Scan bodies too (the model itself when nothing is half). Half values are exact
    in float32, so the copy computes what the model means, without the half rounding between ops; gradient
    methods then run on it (half-precision gradients are too coarse)."""
    if not has_half(model):
        return model
    model = copy_model(model)
    for graph in graphs(model.graph):
        for index, tensor in enumerate(graph.initializer):
            if tensor.data_type in HALF_TYPES:
                graph.initializer[index].CopyFrom(float32_tensor(tensor))
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR and attr.t.data_type in HALF_TYPES:
                    attr.t.CopyFrom(float32_tensor(attr.t))
                elif attr.type == AttributeProto.INT and attr.name in TYPE_ATTRIBUTES and attr.i in HALF_TYPES:
                    attr.i = TensorProto.FLOAT
        for value in list(graph.input) + list(graph.output) + list(graph.value_info):
            if value.type.tensor_type.elem_type in HALF_TYPES:
                value.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def float32_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name)


def half_sources(graph: onnx.GraphProto) -> dict[str, str]:
    """Where half values enter the graph (subgraphs included): input, weight, constant or cast name -> how
    to name it in a message."""
    sources: dict[str, str] = {}
    for sub in graphs(graph):
        for value in list(sub.input) + list(sub.output):
            if value.type.tensor_type.elem_type in HALF_TYPES:
                sources[value.name] = f"{HALF_TYPES[value.type.tensor_type.elem_type]} tensor '{value.name}'"
        for tensor in sub.initializer:
            if tensor.data_type in HALF_TYPES:
                sources[tensor.name] = f"{HALF_TYPES[tensor.data_type]} weight '{tensor.name}'"
    for node, _, _ in walk(graph):
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR and attr.t.data_type in HALF_TYPES:
                sources[node.output[0]] = f"{HALF_TYPES[attr.t.data_type]} constant '{node.output[0]}'"
            if node.op_type == "Cast" and attr.name == "to" and attr.i in HALF_TYPES:
                sources[node.output[0]] = f"cast to {HALF_TYPES[attr.i]} '{node.output[0]}'"
    return sources


def check_precision(model: onnx.ModelProto) -> None:
    """Raise UnsupportedModel where float16/bfloat16 values reach an op that computes with them.

    Half-precision gradients are too coarse for attribution and torch's CPU half
    kernels do not match onnxruntime, so such models are refused rather than run loosely.
    Conversions and selections (HALF_OPS) are exact in half precision and run.
    """
    half = typed_names(model.graph, HALF_TYPES)
    sources = half_sources(model.graph)
    found: list[str] = []
    for node, _, _ in walk(model.graph):
        if node.op_type in HALF_OPS:
            continue
        for name in node.input:
            if name in half:
                what = sources.get(name, f"{HALF_TYPES[half[name]]} tensor '{name}'")
                if what not in found:
                    found.append(what)
    if found:
        raise UnsupportedModel(
            f"The converter runs float32/float64 models only and this one holds {found[0]}"
            f"{f' (and {len(found) - 1} more)' if len(found) > 1 else ''}; convert it to float32 "
            f"(e.g. onnxconverter_common.float16.convert_float16_to_float32) for gradient methods.")


def topological_order(graph: onnx.GraphProto) -> list[tuple[int, onnx.NodeProto]]:
    """(original index, node) in an order where every node follows its producers (stable)."""
    produced_by: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.output:
            if name:
                produced_by[name] = index
    done: set[int] = set()
    order: list[tuple[int, onnx.NodeProto]] = []

    def visit(start: int) -> None:
        stack = [(start, False)]
        while stack:
            index, expanded = stack.pop()
            if index in done:
                continue
            if expanded:
                done.add(index)
                order.append((index, graph.node[index]))
                continue
            stack.append((index, True))
            for name in reversed(graph.node[index].input):
                producer = produced_by.get(name)
                if producer is not None and producer not in done and producer != index:
                    stack.append((producer, False))
    for index in range(len(graph.node)):
        visit(index)
    return order


def to_torch_tensor(tensor: TensorProto) -> torch.Tensor:
    """A TensorProto (weights already in memory) as a CPU torch tensor."""
    if uses_external_data(tensor):
        raise UnsupportedModel(f"Weight '{tensor.name}' is stored in an external data file that was not loaded; "
                               "pass the model's path (or load it with onnx.load(path)) so its data is read.")
    array = numpy_helper.to_array(tensor)
    if array.dtype == object or array.dtype.kind in "SU":
        raise UnsupportedModel(f"Tensor '{tensor.name}' holds strings, which the converter cannot run.")
    return array_to_torch(array, tensor.name)


BIT_VIEWS = {"bfloat16": (np.uint16, torch.bfloat16), "float8_e4m3fn": (np.uint8, torch.float8_e4m3fn),
             "float8_e4m3fnuz": (np.uint8, torch.float8_e4m3fnuz), "float8_e5m2": (np.uint8, torch.float8_e5m2),
             "float8_e5m2fnuz": (np.uint8, torch.float8_e5m2fnuz)}


def array_to_torch(array: np.ndarray, name: str = "") -> torch.Tensor:
    """A numpy array as a torch tensor; bfloat16 and float8 arrays (ml_dtypes, which torch.from_numpy lacks)
    through their bits."""
    view = BIT_VIEWS.get(array.dtype.name)
    if view is not None:
        return torch.from_numpy(np.array(array, copy=True).view(view[0])).view(view[1])
    try:
        return torch.from_numpy(np.array(array, copy=True))
    except TypeError:
        raise UnsupportedModel(f"Tensor '{name}' is {array.dtype.name}, which torch cannot hold.") from None


def sparse_to_dense(sparse: onnx.SparseTensorProto) -> torch.Tensor:
    """A SparseTensorProto as a dense CPU tensor."""
    values = to_torch_tensor(sparse.values)
    indices = to_torch_tensor(sparse.indices).to(torch.int64)
    dense = torch.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
    if indices.dim() == 2:  # coordinates [nnz, rank] -> linear
        strides = torch.tensor(np.cumprod([1] + list(sparse.dims)[::-1])[:-1][::-1].copy())
        indices = (indices * strides).sum(-1)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(list(sparse.dims))


def attribute_values(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (strings decoded, tensors as torch tensors)."""
    values: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            values[attr.name] = to_torch_tensor(attr.t)
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            values[attr.name] = sparse_to_dense(attr.sparse_tensor)
        elif attr.type == AttributeProto.GRAPH:  # If/Loop/Scan bodies: the module builds them
            values[attr.name] = attr.g
        elif attr.type == AttributeProto.GRAPHS:
            raise UnsupportedModel(f"Node '{node.name}' ({node.op_type}) holds a list of subgraphs, which the converter "
                                   "does not run.")
        else:
            value = onnx.helper.get_attribute_value(attr)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode() for v in value]
            values[attr.name] = value
    return values


def call_arguments(fn: Callable, node: onnx.NodeProto, attrs: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for fn: the attributes it accepts plus `output_count` where it asks for it.

    An attribute the function does not know raises UnsupportedModel at build time,
    so no node silently ignores a setting that changes its result.
    """
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [name for name in attrs if name not in params and not takes_any]
    if unknown:
        raise UnsupportedModel(f"Node '{node.name}' ({node.op_type}) has attribute(s) {', '.join(unknown)} that the "
                               "converter does not handle.")
    kwargs = dict(attrs)
    if "output_count" in params:  # outputs up to the last one the graph names (trailing "" are absent)
        kwargs["output_count"] = max((i + 1 for i, name in enumerate(node.output) if name), default=0)
    return kwargs
