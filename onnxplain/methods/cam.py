"""CAM (Zhou et al., 2016): class weights of a global-pooling + linear head applied to the pooled layer.

Also holds the helpers the forward-only CAM family shares: the layer's activations
in (N, C, h, w), perturbed variants run in memory-bounded chunks, and the tail of
the model run on edited activations of one image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import onnx

from ..errors import MethodError
from ..progress import progress
from ..targets import ClassTarget, Target
from . import register
from .base import Method, RawMaps
from .layers import channels_first

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import Prepared
    from ..model import Model, TensorInfo

CHUNK_BYTES = 1 << 27  # perturbed copies are built at most this many bytes at a time


# ---- helpers shared by the forward-only CAM family ---------------------------------------------
def layer_activations(explainer: "Explainer", batch: "Prepared", layer: str
                      ) -> tuple[np.ndarray, "TensorInfo", np.ndarray]:
    """(raw value in the tensor's layout, its TensorInfo, the same as (N, C, h, w)), from the cached forward."""
    info = explainer.model.spatial_info(layer)
    raw = explainer.forward(batch, [layer])[layer]
    return raw, info, channels_first(raw, info)


def chunks(count: int, row_bytes: int, batch_size: int) -> list[slice]:
    """Slices over `count` rows: one runtime batch each (so a reused input buffer stays small and warm), fewer
    rows where a batch would hold more than CHUNK_BYTES."""
    rows = max(1, min(batch_size, CHUNK_BYTES // max(int(row_bytes), 1)))
    return [slice(start, min(start + rows, count)) for start in range(0, count, rows)]


def input_scores(explainer: "Explainer", target: Target, count: int, row_bytes: int,
                 make: Callable[[slice], np.ndarray], desc: str) -> np.ndarray:
    """Target scores of `count` perturbed inputs built chunk by chunk by `make(rows)` and run through the model."""
    slices = chunks(count, row_bytes, explainer.runtime.batch_size)
    scores = [np.asarray(target.score(explainer.run(make(rows))), np.float64)
              for rows in progress(slices, desc=desc, quiet=explainer.quiet or len(slices) < 4, unit="batch")]
    return np.concatenate(scores) if scores else np.zeros(0)


def tail_scores(explainer: "Explainer", batch: "Prepared", index: int, layer: str, target: Target, count: int,
                make: Callable[[slice], np.ndarray], desc: str) -> np.ndarray:
    """Target scores of `count` edited layer values of image `index` (built by `make(rows)`, in the tensor's own
    layout), run through the model's tail only; tensors crossing the cut are fed unchanged."""
    cut, runtime = explainer.tail(layer)
    graph_inputs = {i.name for i in explainer.model.inputs}
    crossing = {name: batch.x if name in graph_inputs else explainer.forward(batch, [name])[name]
                for name in cut.crossing}
    row = explainer.forward(batch, [layer])[layer][index]
    scores = []
    slices = chunks(count, row.nbytes, runtime.batch_size)
    for rows in progress(slices, desc=desc, quiet=explainer.quiet or len(slices) < 4, unit="batch"):
        variants = make(rows)
        feeds = {cut.at: variants}
        for name, value in crossing.items():
            feeds[name] = np.broadcast_to(value[index:index + 1], (len(variants),) + value.shape[1:])
        scores.append(np.asarray(target.score(runtime.run(feeds)), np.float64))
    return np.concatenate(scores) if scores else np.zeros(0)


def optional_count(method: str, name: str, value) -> int | None:
    """A positive int or None from a parameter that may arrive as a CLI string."""
    if value is None or value in ("", "none", "None", "all"):
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise MethodError(f"Parameter '{name}' of method '{method}' must be a positive whole number or None, "
                          f"not {value!r}.")
    return count


def choose(method: str, name: str, value: str, allowed: Sequence[str]) -> str:
    """`value` when it is one of `allowed`, else a MethodError naming the choices."""
    if value not in allowed:
        raise MethodError(f"Parameter '{name}' of method '{method}' must be one of {', '.join(allowed)}, "
                          f"not {value!r}.")
    return value


# ---- CAM -------------------------------------------------------------------------------------------
PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}
AFTER_LOGITS = PASS_THROUGH | {"Softmax", "LogSoftmax", "Sigmoid"}
SIDE_BRANCH = {"Shape", "Size"}  # legacy exports compute Reshape targets from the pooled tensor's shape


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


def _consumers(model: "Model", name: str) -> list[onnx.NodeProto]:
    return [n for n in model.consumers.get(name, []) if n.op_type not in SIDE_BRANCH]


def _ints(model: "Model", node: onnx.NodeProto, attribute: str, input_index: int) -> list[int] | None:
    """An int list from an attribute, or from a constant input (opset 18+ moved ReduceMean's axes there)."""
    for attr in node.attribute:
        if attr.name == attribute:
            return list(onnx.helper.get_attribute_value(attr))
    if len(node.input) > input_index and node.input[input_index]:
        value = model.weights.get(node.input[input_index])
        if value is not None:
            return [int(v) for v in np.ravel(value)]
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _path_after(model: "Model", layer: str, steps: int = 4) -> str:
    """The ops that follow `layer` (first consumer each time), for error messages."""
    ops, name = [], layer
    for _ in range(steps):
        nodes = _consumers(model, name)
        if not nodes:
            break
        ops.append(nodes[0].op_type if len(nodes) == 1 else "{" + ", ".join(n.op_type for n in nodes) + "}")
        name = nodes[0].output[0]
    more = " -> ..." if name and _consumers(model, name) else ""
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
        window = tuple(_attr(pool, "kernel_shape", ()))  # a window as large as the map is global pooling
        if window == (info.shape[order[2]], info.shape[order[3]]) and not any(_attr(pool, "pads", ())) \
                and _attr(pool, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID"):
            return {order[2], order[3]}
    if pool.op_type in ("ReduceMean", "ReduceMax"):
        axes = _ints(model, pool, "axes", 1)
        return {order[a % rank] for a in axes} if axes else None
    return None


def find_head(model: "Model", layer: str) -> LinearHead:
    """The global pooling + linear head right after `layer`, or a MethodError naming what follows it instead."""
    info = model.spatial_info(layer)
    fail = MethodError(f"CAM needs global pooling then a linear layer after the layer '{layer}'; found "
                       f"{_path_after(model, layer)}; use grad-cam or score-cam instead.")
    name, order = layer, list(range(len(info.shape)))
    nodes = _consumers(model, name)
    while len(nodes) == 1 and nodes[0].op_type in ("Identity", "Dropout", "Transpose"):
        if nodes[0].op_type == "Transpose":  # tf2onnx writes NCHW -> NHWC before pooling
            order = [order[p] for p in _attr(nodes[0], "perm", range(len(order) - 1, -1, -1))]
        name = nodes[0].output[0]
        nodes = _consumers(model, name)
    if len(nodes) != 1 or _pooled_axes(model, nodes[0], info, order) != _spatial_axes(info):
        raise fail
    pool = nodes[0]
    name = pool.output[0]
    nodes = _consumers(model, name)
    while len(nodes) == 1 and nodes[0].op_type in PASS_THROUGH and nodes[0].input[0] == name:
        name = nodes[0].output[0]
        nodes = _consumers(model, name)
    if len(nodes) != 1 or nodes[0].input[0] != name:
        raise fail
    linear = nodes[0]
    weight = model.weights.get(linear.input[1]) if len(linear.input) > 1 else None
    if linear.op_type == "Gemm" and weight is not None and weight.ndim == 2 and not _attr(linear, "transA", 0):
        weights = (weight if _attr(linear, "transB", 0) else weight.T) * _attr(linear, "alpha", 1.0)
    elif linear.op_type == "MatMul" and weight is not None and weight.ndim == 2:
        weights = weight.T
    elif linear.op_type == "Conv" and weight is not None and weight.ndim == 4 and weight.shape[2:] == (1, 1) \
            and _attr(linear, "group", 1) == 1:
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

    def explain(self, explainer, batch, targets, layer=None) -> RawMaps:
        head = find_head(explainer.model, layer)
        _, _, acts = layer_activations(explainer, batch, layer)
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
