"""Every ONNX graph query in one place: attributes, constants, weight and bias layers, relu sources, the head.

Functions take a Model (for its indexes: producers, consumers, weights, input_dependent) or a bare
NodeProto; none modifies the graph. Folded constants are cached on the Model itself (`Model.folded`),
so they live exactly as long as the model does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

if TYPE_CHECKING:
    from .model import Model

SIDE_BRANCH = {"Shape", "Size"}          # legacy exports compute Reshape targets from a tensor's shape
SOFTMAX_OPS = {"Softmax", "LogSoftmax"}
WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that keep a non-negative input non-negative (and zero channels zero).
SIGN_KEEPING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Upsample", "Identity",
                "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Dropout", "DepthToSpace",
                "SpaceToDepth", "Slice", "Split", "Pad"}
RELU_LIKE = ("Relu", "LeakyRelu", "PRelu", "Clip", "HardSwish")


# ---- attributes ------------------------------------------------------------------------------
def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """An attribute's value as onnx.helper.get_attribute_value reads it (bytes decoded to str), or `default`."""
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def attr_int(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    value = attr(node, name)
    return default if value is None else int(value)


def attr_float(node: onnx.NodeProto, name: str, default: float | None = None) -> float | None:
    value = attr(node, name)
    return default if value is None else float(value)


def attr_str(node: onnx.NodeProto, name: str, default: str | None = None) -> str | None:
    value = attr(node, name)
    return default if value is None else str(value)


def attr_ints(node: onnx.NodeProto, name: str, default: Sequence[int] | None = None) -> list[int] | None:
    value = attr(node, name)
    if value is None:
        return None if default is None else list(default)
    return [int(v) for v in value]


def ints(model: "Model", node: onnx.NodeProto, attribute: str, input_index: int) -> list[int] | None:
    """An int list from an attribute, or from a constant input (opset 18+ moved ReduceMean's axes there)."""
    listed = attr_ints(node, attribute)
    if listed is not None:
        return listed
    if len(node.input) > input_index and node.input[input_index]:
        value = constant(model, node.input[input_index])
        if value is not None:
            return [int(v) for v in np.ravel(value)]
    return None


# ---- producers, consumers, constants ------------------------------------------------------------
def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The node producing each tensor."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes reading each tensor, in graph order (a node reading a tensor twice is listed once)."""
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            if name:
                found.setdefault(name, []).append(node)
    return found


def readers(model: "Model", name: str, skip: set[str] = SIDE_BRANCH) -> list[onnx.NodeProto]:
    """The consumers of a tensor, without shape bookkeeping ops (Shape, Size) by default."""
    return [n for n in model.consumers.get(name, []) if n.op_type not in skip]


def weight_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every weight by name: initializers, non-scalar Constant tensors, and Identity nodes forwarding a weight."""
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = attr(node, "value")
            if isinstance(value, onnx.TensorProto) and value.dims:  # scalars are shape bookkeeping
                found[node.output[0]] = numpy_helper.to_array(value)
        elif node.op_type == "Identity" and node.input[0] in found:
            found[node.output[0]] = found[node.input[0]]
    return found


def constant(model: "Model", name: str) -> np.ndarray | None:
    """The value of a constant tensor (initializer, Constant node of any kind, Identity/Cast of one, or a
    small chain of ops on constants, folded once per model), else None."""
    if not name:
        return None
    if name in model.weights:
        return model.weights[name]
    node = model.producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant" and node.attribute:
        value = helper.get_attribute_value(node.attribute[0])
        return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
    if node.op_type in ("Identity", "Cast") and node.input[0] in model.weights:
        return model.weights[node.input[0]]
    if name in model.input_dependent:
        return None
    if name not in model.folded:
        model.folded[name] = _fold(model, name)
    return model.folded[name]


def _fold(model: "Model", name: str) -> np.ndarray | None:
    """Evaluate a tensor that depends on no input (exporters leave pads and scales as small op chains)."""
    from onnx.reference import ReferenceEvaluator
    needed = model.ancestors(name)
    graph = model.proto.graph
    nodes = [n for n in graph.node if any(o in needed for o in n.output)]
    weights = [t for t in graph.initializer if t.name in needed]
    sub = helper.make_graph(nodes, "fold", [], [helper.make_empty_tensor_value_info(name)], weights)
    proto = helper.make_model(sub, opset_imports=list(model.proto.opset_import), ir_version=model.proto.ir_version,
                              functions=list(model.proto.functions))
    try:
        return np.asarray(ReferenceEvaluator(proto).run(None, {})[0])
    except Exception:  # an op the reference evaluator lacks: the caller treats the value as unknown
        return None


# ---- weight and bias layers ------------------------------------------------------------------
@dataclass(frozen=True)
class WeightLayer:
    """A node with learned weights: its output tensor (the address), op, and the weights it reads."""
    name: str
    op_type: str
    weights: tuple[str, ...]


def weight_layers(model: "Model") -> list[WeightLayer]:
    """Conv/ConvTranspose/Gemm/MatMul nodes that read weights, in graph order.

    Weights forwarded through Identity nodes (legacy exports share weights that way) are traced back to
    the initializer or Constant that holds them, which is what `surgery.randomise` redraws.
    """
    stored = {t.name for t in model.proto.graph.initializer}
    stored |= {n.output[0] for n in model.proto.graph.node if n.op_type == "Constant"}
    known = set(model.weights)
    layers = []
    for node in model.proto.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        sources = []
        for name in node.input:
            while name in known and name not in stored and name in model.producers \
                    and model.producers[name].op_type == "Identity":
                name = model.producers[name].input[0]
            if name in stored and name in known and name not in sources:
                sources.append(name)
        if sources and node.output and node.output[0]:
            layers.append(WeightLayer(node.output[0], node.op_type, tuple(sources)))
    return layers


@dataclass(frozen=True)
class Bias:
    """A bias added by one node: the tensor it is added into (N, C, h, w) and the bias values (C,)."""
    tensor: str
    values: np.ndarray


def bias_layers(model: "Model") -> list[Bias]:
    """Every Conv/ConvTranspose with a constant bias and every BatchNormalization (effective bias) whose output
    is a 4-D map, in graph order (FullGrad's bias terms)."""
    found = []
    for node in model.proto.graph.node:
        out = node.output[0] if node.output else ""
        info = model.tensors.get(out)
        if info is None or info.shape is None or len(info.shape) != 4:
            continue
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 2 and node.input[2] in model.weights:
            found.append(Bias(out, np.array(model.weights[node.input[2]], np.float32).reshape(-1)))
        elif node.op_type == "BatchNormalization" and all(name in model.weights for name in node.input[1:5]):
            scale, shift, mean, var = (np.asarray(model.weights[name], np.float64) for name in node.input[1:5])
            eps = attr_float(node, "epsilon", 1e-5)
            found.append(Bias(out, (shift - mean * scale / np.sqrt(var + eps)).astype(np.float32)))
    return found


def gemm_bias(model: "Model", node: onnx.NodeProto) -> np.ndarray | None:
    """The constant bias (C) input of a Gemm (times beta), or None."""
    if node.op_type != "Gemm" or len(node.input) < 3 or not node.input[2]:
        return None
    value = constant(model, node.input[2])
    return None if value is None else np.asarray(value) * attr_float(node, "beta", 1.0)


# ---- relu-like sources -----------------------------------------------------------------------
def clip_min(model: "Model", node: onnx.NodeProto) -> float | None:
    """The lower bound of a Clip: its `min` input (opset 11+) or attribute (before), None when absent."""
    if len(node.input) > 1 and node.input[1]:
        low = constant(model, node.input[1])
        return float(np.asarray(low).min()) if low is not None else None
    return attr_float(node, "min")


def relu_like(model: "Model", node: onnx.NodeProto) -> str | None:
    """Which ReLU-like op a node is: 'Relu', 'LeakyRelu', 'PRelu', 'Clip' (min 0, e.g. ReLU6), 'HardSwish'
    (also HardSigmoid followed by Mul with the same input, as exporters write it); else None."""
    if node.op_type in ("Relu", "LeakyRelu", "PRelu", "HardSwish"):
        return node.op_type
    if node.op_type == "Clip":
        low = clip_min(model, node)
        return "Clip" if low is not None and low == 0 else None
    if node.op_type == "Mul" and len(node.input) == 2:
        for a, b in (node.input, node.input[::-1]):
            gate = model.producers.get(b)
            if gate is not None and gate.op_type == "HardSigmoid" and gate.input[0] == a:
                return "HardSwish"
    return None


def relu_source(model: "Model", name: str) -> str | None:
    """The non-negative ReLU-like op a tensor comes from ('Relu', or 'Clip' with min >= 0), directly or through
    sign-keeping ops (pools, reshapes, concat); else None. The dead-filter test is meaningful after these."""
    node = model.producers.get(name)
    if node is None:
        return None
    if node.op_type == "Relu":
        return "Relu"
    if node.op_type == "Clip":
        low = clip_min(model, node)
        return "Clip" if low is not None and low >= 0 else None
    if node.op_type in SIGN_KEEPING:
        sources = [relu_source(model, i) for i in node.input if i in model.input_dependent]
        return sources[0] if sources and None not in sources else None
    return None


# ---- the head --------------------------------------------------------------------------------
def class_logits(model: "Model", output: str) -> str:
    """The tensor holding class scores before softmax: the output itself, or the input of a final Softmax."""
    node = model.producers.get(output)
    if node is not None and node.op_type in SOFTMAX_OPS:
        return node.input[0]
    return output


def ancestors(model: "Model", name: str) -> set[str]:
    """Every tensor the given tensor depends on, itself included."""
    seen, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        node = model.producers.get(current)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return seen


def follow(model: "Model", name: str, ops: set[str] | Sequence[str]) -> str:
    """Walk forward from `name` through single-consumer chains of `ops` (each reading the tensor as its first
    input); returns the last tensor reached (the head walk from a layer toward the logits)."""
    nodes = readers(model, name)
    while len(nodes) == 1 and nodes[0].op_type in ops and nodes[0].input[0] == name:
        name = nodes[0].output[0]
        nodes = readers(model, name)
    return name


def same_structure(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """True when two graphs have the same nodes, inputs and outputs (weights may differ)."""
    def outline(p: onnx.ModelProto) -> tuple:
        return ([(n.op_type, tuple(n.input), tuple(n.output)) for n in p.graph.node if n.op_type != "Constant"],
                [i.name for i in p.graph.input], [o.name for o in p.graph.output])
    return a is b or outline(a) == outline(b)
