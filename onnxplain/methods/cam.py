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

    def describe(self) -> str:
        return f"{self.pool} -> {self.linear}"


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
    """The global pooling + linear head right after `layer`, or a MethodError naming what follows it instead."""
    info = model.spatial_info(layer)
    fail = MethodError(f"CAM needs global pooling then a linear layer after the layer '{layer}'; found "
                       f"{_path_after(model, layer)}; use grad-cam or score-cam instead.")
    name, order = layer, list(range(len(info.shape)))
    nodes = graph.readers(model, name)
    while len(nodes) == 1 and nodes[0].op_type in ("Identity", "Dropout", "Transpose"):
        if nodes[0].op_type == "Transpose":  # tf2onnx writes NCHW -> NHWC before pooling
            order = [order[p] for p in graph.attr_ints(nodes[0], "perm", range(len(order) - 1, -1, -1))]
        name = nodes[0].output[0]
        nodes = graph.readers(model, name)
    if len(nodes) != 1 or _pooled_axes(model, nodes[0], info, order) != _spatial_axes(info):
        raise fail
    pool = nodes[0]
    name = pool.output[0]
    nodes = graph.readers(model, name)
    while len(nodes) == 1 and nodes[0].op_type in PASS_THROUGH and nodes[0].input[0] == name:
        name = nodes[0].output[0]
        nodes = graph.readers(model, name)
    if len(nodes) != 1 or nodes[0].input[0] != name:
        raise fail
    linear = nodes[0]
    weight = model.weights.get(linear.input[1]) if len(linear.input) > 1 else None
    if linear.op_type == "Gemm" and weight is not None and weight.ndim == 2 and not graph.attr_int(linear, "transA", 0):
        weights = (weight if graph.attr_int(linear, "transB", 0) else weight.T) * graph.attr_float(linear, "alpha", 1.0)
    elif linear.op_type == "MatMul" and weight is not None and weight.ndim == 2:
        weights = weight.T
    elif linear.op_type == "Conv" and weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1) \
            and graph.attr_int(linear, "group", 1) == 1:
        weights = weight[:, :, 0, 0]
    else:
        raise fail
    channels = info.shape[-1] if info.layout in ("NHWC", "tokens") else info.shape[1]
    if isinstance(channels, int) and weights.shape[1] != channels:
        raise fail
    return LinearHead(pool.op_type, linear.op_type, np.asarray(weights, np.float64), linear.output[0],
                      frozenset(_per_class_followers(model, linear.output[0])))


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
    with average pooling the class score is the map's mean plus the bias. Needs no extra forward pass.
    """
    name = "cam"
    engine = "ort"
    summary = "class activation map: linear-head weights x pooled layer (needs GAP -> linear)"
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
            maps.append(np.maximum(cam, 0) if self.params.relu else cam)
            extras.append({"head": head.describe()})
        return RawMaps(np.stack(maps), extras)
