"""Explanations grafted into the ONNX graph: a model whose outputs are the original ones plus maps that ONNX
nodes compute with every inference, so onnxruntime, Triton or KServe return them without onnxplain.

Methods: `cam` (the linear head's weights x the layer, for the predicted class and for every class), `recipro-cam`
(the tail copied into the graph and run on the h*w masked layers as one batch, softmax, the predicted class's
column), `eigen-cam` (the first principal direction by power iteration unrolled in nodes: the smaller Gram
matrix, positions or channels, squared 16 times, each normalised, then applied to a start vector; ONNX has
no SVD op) and `activations`
(the layer itself). The new tensors are prefixed `xai_`; NCHW layers with static h, w only.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UserError
from .surgery import split

if TYPE_CHECKING:
    from .model import Model

METHODS = ("cam", "recipro-cam", "eigen-cam", "activations")
SQUARINGS = 16  # power iteration steps of eigen-cam: the Gram matrix raised to 2**16


class GraftError(UserError):
    """A model or layer that the graft cannot take."""


class Builder:
    """Nodes and initializers appended to a graph, with fresh `xai_` names."""

    def __init__(self, graph: onnx.GraphProto, prefix: str, opset: int):
        self.graph, self.prefix, self.opset, self.count = graph, prefix, opset, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"xai_{self.prefix}_{hint}_{self.count}"

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.name(hint)
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", out: str | None = None, **attrs) -> str:
        out = out or self.name(hint or op_type.lower())
        self.graph.node.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def reduce(self, op_type: str, x: str, axes: list[int], keepdims: int) -> str:
        """A Reduce* node: axes as an input (ReduceSum from opset 13, the others from 18) or an attribute."""
        if self.opset >= 18 or op_type == "ReduceSum":
            return self.op(op_type, [x, self.ints(*axes)], keepdims=keepdims)
        return self.op(op_type, [x], axes=axes, keepdims=keepdims)

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, np.int64), "shape")


def _layer(model: "Model", layer: str) -> tuple[str, int, int, int]:
    """(tensor name, C, h, w) of an NCHW layer with static sizes; GraftError otherwise."""
    name = model.resolve_layer(layer)
    info = model.spatial_info(name)
    dims = info.shape[1:] if info.shape else ()
    if info.layout != "NCHW" or len(dims) != 3 or not all(isinstance(d, int) for d in dims):
        raise GraftError(f"The graft takes NCHW layers with static channels, height and width; '{name}' is "
                         f"{info.layout} {list(info.shape or [])}; pick another layer with --layer.")
    return (name, *dims)


def _predicted(b: Builder, output: str) -> str:
    """(N,) int64: the predicted class of each image on the model's output."""
    flat = b.op("Flatten", [output], "scores", axis=1)
    return b.op("ArgMax", [flat], "class", axis=1, keepdims=0)


def _cam(b: Builder, model: "Model", layer: str, c: int, h: int, w: int, output: str) -> list[str]:
    from .methods.cam import find_head
    head = find_head(model, layer)
    if output not in head.outputs:
        raise GraftError(f"CAM needs the model's output '{output}' to come from the linear layer after '{layer}' "
                         f"(it makes '{head.logits}'); graft recipro-cam or eigen-cam instead.")
    weights = b.const(head.weights.astype(np.float32), "weights")            # (K, C)
    flat = b.op("Reshape", [layer, b.ints(-1, c, h * w)], "flat")            # (N, C, hw)
    every = b.op("MatMul", [weights, flat], "all")                           # (N, K, hw)
    every = b.op("Reshape", [every, b.ints(-1, len(head.weights), h, w)], out="xai_cam_all")
    cls = _predicted(b, output)
    picked = b.op("Unsqueeze", [b.op("Gather", [weights, cls], "w"), b.ints(1)], "w1")  # (N, 1, C)
    cam = b.op("Reshape", [b.op("MatMul", [picked, flat]), b.ints(-1, h, w)], "cam")
    return [b.op("Relu", [cam], out="xai_cam"), every, b.op("Identity", [cls], out="xai_class")]


def _eigen(b: Builder, layer: str, c: int, h: int, w: int) -> list[str]:
    flat = b.op("Transpose", [b.op("Reshape", [layer, b.ints(-1, c, h * w)])], perm=[0, 2, 1])  # (N, P, C)
    centred = b.op("Sub", [flat, b.reduce("ReduceMean", flat, [1], 1)], "centred")
    across = b.op("Transpose", [centred], perm=[0, 2, 1])                                       # (N, C, P)
    if h * w < c:  # the top left singular vector from the smaller (P, P) Gram matrix, then v = X^T u
        gram, start = b.op("MatMul", [centred, across], "gram"), b.reduce("ReduceSum", centred, [2], 0)
    else:
        gram, start = b.op("MatMul", [across, centred], "gram"), b.reduce("ReduceSum", centred, [1], 0)
    for _ in range(SQUARINGS):
        gram = b.op("Div", [gram, b.reduce("ReduceMax", b.op("Abs", [gram]), [1, 2], 1)])
        gram = b.op("MatMul", [gram, gram], "power")
    size = h * w if h * w < c else c
    start = b.op("Add", [b.op("Abs", [start]), b.const(np.full(size, 1.0 / size, np.float32))])
    vector = b.op("MatMul", [gram, b.op("Unsqueeze", [start, b.ints(2)])], "v")                 # (N, P|C, 1)
    if h * w < c:
        vector = b.op("MatMul", [across, vector], "v")                                          # (N, C, 1)
    vector = b.op("Div", [vector, b.reduce("ReduceL2", vector, [1], 1)])
    projection = b.op("Squeeze", [b.op("MatMul", [centred, vector]), b.ints(2)], "projection")  # (N, P)
    totals = b.reduce("ReduceSum", centred, [2], 0)
    agree = b.reduce("ReduceSum", b.op("Mul", [projection, totals]), [1], 1)
    sign = b.op("Where", [b.op("Less", [agree, b.const(np.float32(0))]), b.const(np.float32(-1)),
                          b.const(np.float32(1))], "sign")
    signed = b.op("Reshape", [b.op("Mul", [projection, sign]), b.ints(-1, h, w)])
    return [b.op("Relu", [signed], out="xai_eigen_cam")]


def _recipro(b: Builder, proto: onnx.ModelProto, layer: str, c: int, h: int, w: int, output: str) -> list[str]:
    from .methods.recipro import position_masks
    cut = split(proto, layer)
    masks = position_masks(h, w, "gaussian").astype(np.float32).reshape(1, h * w, 1, h, w)
    masked = b.op("Mul", [b.op("Unsqueeze", [layer, b.ints(1)]), b.const(masks, "masks")])      # (N, hw, C, h, w)
    batch = b.op("Reshape", [masked, b.ints(-1, c, h, w)], "batch")
    feeds = {layer: batch, **{name: _repeat(b, name, h * w) for name in cut.crossing}}
    outputs = _copy_tail(b, cut.tail, feeds, {i.name for i in proto.graph.initializer})
    scores = b.op("Flatten", [outputs[output]], axis=1)
    classes = b.op("Slice", [b.op("Shape", [scores]), b.ints(1), b.ints(2)])
    grid = b.op("Concat", [b.ints(-1, h * w), classes], axis=0)
    probs = b.op("Reshape", [b.op("Softmax", [scores], axis=-1), grid], "probs")                # (N, hw, K)
    cls = b.op("Unsqueeze", [_predicted(b, output), b.ints(1, 2)])                              # (N, 1, 1)
    index = b.op("Expand", [cls, b.op("Concat", [b.ints(1), b.ints(h * w), b.ints(1)], axis=0)])
    picked = b.op("GatherElements", [probs, index], axis=2)
    return [b.op("Reshape", [picked, b.ints(-1, h, w)], out="xai_recipro_cam")]


def _repeat(b: Builder, name: str, times: int) -> str:
    """A tensor crossing the cut (a skip connection, the input's shape) with each image repeated `times` times,
    as the masked batch needs it: (N, ...) -> (N * times, ...)."""
    shape = b.op("Shape", [name])
    rank = b.op("Shape", [shape])
    ones = b.op("ConstantOfShape", [b.op("Sub", [rank, b.ints(1)])], value=numpy_helper.from_array(np.ones(1, np.int64)))
    grow = b.op("Concat", [b.ints(1, times), ones], axis=0)
    repeated = b.op("Expand", [b.op("Unsqueeze", [name, b.ints(1)]), grow])
    rest = b.op("Slice", [shape, b.ints(1), b.ints(2**62)])
    return b.op("Reshape", [repeated, b.op("Concat", [b.ints(-1), rest], axis=0)], "repeated")


def _copy_tail(b: Builder, tail: onnx.ModelProto, feeds: dict[str, str], shared: set[str]) -> dict[str, str]:
    """The tail's nodes appended with renamed tensors (its weights shared); its outputs' new names by old name."""
    names = dict(feeds)
    for init in tail.graph.initializer:
        if init.name not in shared:
            names[init.name] = b.const(numpy_helper.to_array(init), "tail")
        else:
            names[init.name] = init.name
    for node in tail.graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise GraftError(f"The tail holds a subgraph op ({node.op_type}); graft recipro-cam at a later layer.")
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = names.get(name, name) if name else name
        for i, name in enumerate(copy.output):
            names[name] = copy.output[i] = b.name("tail") if name else name
        copy.name = f"xai_tail_{node.name}"
        b.graph.node.append(copy)
    return {o.name: names[o.name] for o in tail.graph.output}


def graft(model: "Model", method: str, layer: str = "auto") -> onnx.ModelProto:
    """A copy of the model whose outputs are its own plus the method's maps, computed inside the graph."""
    if method not in METHODS:
        raise GraftError(f"Unknown graft method '{method}'; use one of {', '.join(METHODS)}.")
    opset = next((o.version for o in model.proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise GraftError(f"The model has opset {opset}; the graft needs 13 or later (convert it with "
                         "onnx.version_converter first).")
    name, c, h, w = _layer(model, layer)
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    b, output = Builder(proto.graph, method.replace("-", "_"), opset), proto.graph.output[0].name
    if method == "cam":
        new = _cam(b, model, name, c, h, w, output)
    elif method == "eigen-cam":
        new = _eigen(b, name, c, h, w)
    elif method == "recipro-cam":
        new = _recipro(b, model.proto, name, c, h, w, output)
    else:
        new = [b.op("Identity", [name], out="xai_activations")]
    for out in new:
        proto.graph.output.append(helper.make_value_info(out, onnx.TypeProto()))
    proto.metadata_props.add(key="onnxplain.graft", value=f"{method} at {name}")
    return _typed(proto)


def _typed(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The new outputs typed by shape inference (onnxruntime needs an element type on every graph output)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in proto.graph.output:
        if not out.type.HasField("tensor_type") and out.name in types:
            out.type.CopyFrom(types[out.name])
    return proto


def save(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write the grafted model (weights over 2 GB go to an external data file beside it)."""
    path = Path(path)
    large = proto.ByteSize() > 2**31 - 2**20
    onnx.save(proto, str(path), save_as_external_data=large, location=path.name + ".data" if large else None)
    return path
