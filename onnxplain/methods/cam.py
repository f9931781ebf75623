"""CAM (Zhou et al., 2016): class weights of a global-pooling + linear head applied to the pooled layer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .. import graph
from ..errors import MethodError
from ..targets import ClassTarget
from . import register
from .base import Method, RawMaps
from .perturb import layer_activations

if TYPE_CHECKING:
    from ..model import Model, TensorInfo


PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
AFTER_LOGITS = PASS_THROUGH | {"Softmax", "LogSoftmax", "Sigmoid"}


@dataclass(frozen=True)
class LinearHead:
    """What CAM reads from the graph: the pooling op, class weights (classes, channels) and the logits tensor."""
    pool: str
    linear: str
    weights: np.ndarray
    logits: str
    outputs: frozenset[str]  # the logits and every tensor that follows it through per-class ops
    bias: np.ndarray | None = None  # score-map heads: the 1x1 Conv's bias, part of each class's map

    def describe(self) -> str:
        return self.pool if self.linear == "score maps" and "->" in self.pool else f"{self.pool} -> {self.linear}"


def _path_after(model: "Model", layer: str, steps: int = 4) -> str:
    """The ops that follow `layer` (first consumer each time), for error messages."""
    ops, name = [], layer
    for _ in range(steps):
        nodes = graph.readers(model, name)
        if not nodes:
            break
        ops.append(nodes[0].op_type if len(nodes) == 1 else "{" + ", ".join(n.op_type for n in nodes) + "}")
        name = nodes[0].output[0]
    more = " -> ..." if name and graph.readers(model, name) else ""
    return " -> ".join(ops) + more if ops else "no consumer (the layer is an output)"


def _spatial_axes(info: "TensorInfo") -> set[int] | None:
    """The axes a global pooling of this layer must reduce (None for token tensors with a class token)."""
    if info.layout == "tokens":
        return {1} if info.shape[1] == info.grid[0] * info.grid[1] else None
    return {"NCHW": {2, 3}, "NHWC": {1, 2}}[info.layout]


def _pooled_axes(model: "Model", pool: onnx.NodeProto, info: "TensorInfo", order: list[int]) -> set[int] | None:
    """The layer's axes that `pool` reduces (`order[a]` is the layer axis held by axis a of the pool's input)."""
    rank = len(order)
    if pool.op_type in ("GlobalAveragePool", "GlobalMaxPool") and rank == 4:
        return {order[2], order[3]}
    if pool.op_type in ("AveragePool", "MaxPool") and rank == 4 and len(pool.output) == 1:
        window = tuple(graph.attr_ints(pool, "kernel_shape", ()))  # a window as large as the map is global pooling
        if window == (info.shape[order[2]], info.shape[order[3]]) and not any(graph.attr_ints(pool, "pads", ())) \
                and graph.attr_str(pool, "auto_pad", "NOTSET") in ("NOTSET", "VALID"):
            return {order[2], order[3]}
    if pool.op_type in ("ReduceMean", "ReduceMax"):
        axes = graph.ints(model, pool, "axes", 1)
        return {order[a % rank] for a in axes} if axes else None
    return None


def find_head(model: "Model", layer: str) -> LinearHead:
    """The head CAM reads after `layer`: global pooling then a linear layer; a 1x1 Conv making per-class score
    maps then global pooling; or `layer` itself holding the score maps. Else a MethodError naming what follows."""
    info = model.spatial_info(layer)
    fail = MethodError(f"CAM needs global pooling then a linear layer (or per-class score maps then global "
                       f"pooling) after the layer '{layer}'; found {_path_after(model, layer)}; use grad-cam or "
                       "score-cam instead.")
    name, order = _skip_layout_ops(model, layer, len(info.shape))
    nodes = graph.readers(model, name)
    channels = info.shape[-1] if info.layout in ("NHWC", "tokens") else info.shape[1]
    if len(nodes) == 1 and info.layout == "NCHW" and order == sorted(order) and _pointwise(model, nodes[0]):
        head = _score_map_head(model, nodes[0])  # layer -> 1x1 Conv (one map per class) -> global pooling
        if head is not None:
            return head
    if len(nodes) != 1 or _pooled_axes(model, nodes[0], info, order) != _spatial_axes(info):
        raise fail
    pool = nodes[0]
    name = graph.follow(model, pool.output[0], PASS_THROUGH)
    nodes = graph.readers(model, name)
    if len(nodes) == 1 and nodes[0].input[0] == name:
        weights = _linear_weights(model, nodes[0])
        if weights is not None and (not isinstance(channels, int) or weights.shape[1] == channels):
            return LinearHead(pool.op_type, nodes[0].op_type, weights, nodes[0].output[0],
                              frozenset(_per_class_followers(model, nodes[0].output[0])))
    if all(n.op_type in AFTER_LOGITS for n in nodes) and isinstance(channels, int):
        # the layer holds the per-class score maps and its pooled channels are the class scores
        return LinearHead(pool.op_type, "score maps", np.eye(channels), name,
                          frozenset(_per_class_followers(model, name)))
    raise fail


def _skip_layout_ops(model: "Model", layer: str, rank: int) -> tuple[str, list[int]]:
    """The tensor after Identity/Dropout/Transpose nodes and `order[a]`, the layer axis its axis a holds."""
    name, order = layer, list(range(rank))
    nodes = graph.readers(model, name)
    while len(nodes) == 1 and nodes[0].op_type in ("Identity", "Dropout", "Transpose"):
        if nodes[0].op_type == "Transpose":  # tf2onnx writes NCHW -> NHWC before pooling
            order = [order[p] for p in graph.attr_ints(nodes[0], "perm", range(len(order) - 1, -1, -1))]
        name = nodes[0].output[0]
        nodes = graph.readers(model, name)
    return name, order


def _pointwise(model: "Model", node: onnx.NodeProto) -> bool:
    """A 1x1, ungrouped Conv with constant weights."""
    weight = model.weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    return weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1) \
        and graph.attr_int(node, "group", 1) == 1


def _linear_weights(model: "Model", linear: onnx.NodeProto) -> np.ndarray | None:
    """Class weights (classes, channels) of a Gemm, MatMul or 1x1 Conv reading the pooled vector, else None."""
    weight = model.weights.get(linear.input[1]) if len(linear.input) > 1 else None
    if weight is None:
        return None
    if linear.op_type == "Gemm" and weight.ndim == 2 and not graph.attr_int(linear, "transA", 0):
        weights = (weight if graph.attr_int(linear, "transB", 0) else weight.T) * graph.attr_float(linear, "alpha", 1.0)
    elif linear.op_type == "MatMul" and weight.ndim == 2:
        weights = weight.T
    elif _pointwise(model, linear):
        weights = weight[:, :, 0, 0]
    else:
        return None
    return np.asarray(weights, np.float64)


def _score_map_head(model: "Model", conv: onnx.NodeProto) -> LinearHead | None:
    """A 1x1 Conv whose output maps (one per class) go through global pooling to the logits, or None."""
    scores = conv.output[0]
    info = model.tensors.get(scores)
    nodes = graph.readers(model, scores)
    if info is None or info.shape is None or len(info.shape) != 4 or len(nodes) != 1 \
            or _pooled_axes(model, nodes[0], info, [0, 1, 2, 3]) != {2, 3}:
        return None
    logits = graph.follow(model, nodes[0].output[0], PASS_THROUGH)
    if not all(n.op_type in AFTER_LOGITS for n in graph.readers(model, logits)):
        return None
    weight = model.weights[conv.input[1]]
    bias = graph.constant(model, conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
    return LinearHead(f"Conv -> {nodes[0].op_type}", "score maps", np.asarray(weight[:, :, 0, 0], np.float64),
                      logits, frozenset(_per_class_followers(model, logits)),
                      None if bias is None else np.asarray(bias, np.float64).reshape(-1))


def _per_class_followers(model: "Model", logits: str) -> set[str]:
    """The logits and the tensors computed from them by a bias Add, reshapes or softmax/sigmoid only."""
    found, stack = {logits}, [logits]
    while stack:
        for node in model.consumers.get(stack.pop(), []):
            bias = node.op_type == "Add" and any(i in model.weights for i in node.input)
            if node.op_type in AFTER_LOGITS or bias:
                found.update(node.output)
                stack.extend(node.output)
    return found


@register
class CAM(Method):
    """Zhou et al. (2016): sum_k w[c, k] A_k with w the linear layer's weights after global pooling.

    Exact for models whose layer feeds global average (or max) pooling then one linear layer:
    with average pooling the class score is the map's mean plus the bias. Also reads per-class score-map
    heads (a 1x1 Conv with one output map per class, then global max or average pooling): the map is that
    class's score map, bias included, whose max (or mean) is the class score; the layer may be the Conv's
    input or the score maps themselves. Needs no extra forward pass.
    """
    name = "cam"
    engine = "ort"
    summary = "class activation map: linear-head weights x pooled layer (GAP -> linear, or score maps -> global pool)"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        relu: bool = True  # keep only positive evidence (False returns the signed weighted sum)

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        head = find_head(context.model, layer)
        _, _, acts = layer_activations(context, batch, layer)
        maps, extras = [], []
        for i, target in enumerate(targets):
            if not isinstance(target, ClassTarget) or target.output not in head.outputs:
                raise MethodError(f"CAM explains one class of the linear layer that makes '{head.logits}'; "
                                  "give a class index as target on that output (or use grad-cam).")
            if not 0 <= target.index < len(head.weights):
                raise MethodError(f"Target class {target.index} is out of range for the linear layer "
                                  f"({len(head.weights)} classes).")
            cam = np.einsum("k,khw->hw", head.weights[target.index], acts[i].astype(np.float64))
            if head.bias is not None:
                cam = cam + head.bias[target.index]
            maps.append(np.maximum(cam, 0) if self.params.relu else cam)
            extras.append({"head": head.describe()})
        return RawMaps(np.stack(maps), extras)
