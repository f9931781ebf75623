"""The auto layer from the graph alone: the last spatial feature tensor on the path to an output that is not
a token tensor read only at its class token (a ViT's final LayerNorm). Model.auto_layer is this choice, and
autolayer.choose is the same walk with its probe; only onnx graph queries here (the model imports it).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable

import numpy as np

from .detecthead import head_tensors
from .errors import TensorNameError

if TYPE_CHECKING:
    from .model import Model, TensorInfo

log = logging.getLogger("onnxplain.autolayer")
PER_TOKEN = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Erf", "Gelu", "Relu", "Tanh", "Sigmoid", "Identity",
             "LayerNormalization", "Cast", "Dropout", "Neg", "Exp", "Log", "Reciprocal", "HardSigmoid", "HardSwish",
             "Clip", "LeakyRelu", "Elu", "Selu", "Softplus"}
MAX_PROBES = 8  # tensors the probe may skip before the walk stops


def candidates(model: "Model", output: str) -> list["TensorInfo"]:
    """Spatial feature tensors on the path to `output`, last first: H, W > 1, not a graph output, and more
    channels than a dense output has (so a detector's or segmenter's own 1x1-conv head is skipped)."""
    ancestors = model.ancestors(output)
    outputs = {o.name for o in model.proto.graph.output}
    out_info = model.tensors.get(output)
    head = out_info.channels if out_info is not None and out_info.spatial else 1
    return [t for t in reversed(model.spatial_layers) if t.name in ancestors and t.name not in outputs
            and min(t.hw or (2, 2)) > 1 and (t.channels or 2) > max(head or 1, 1)]


def class_token_only(model: "Model", name: str) -> bool:
    """Whether every path from token tensor `name` selects token 0 before any op that mixes tokens."""
    seen, stack, reached_selection = set(), [name], False
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for node in model.consumers.get(current, []):
            if node.op_type in ("Shape", "Size"):
                continue
            if _selects_token0(model, node, current):
                reached_selection = True
                continue
            if node.op_type in PER_TOKEN or _per_token_matmul(model, node, current) or _last_axis_op(model, node):
                stack.extend(o for o in node.output if o)
                continue
            return False  # an op that may mix tokens reads the patch tokens
    return reached_selection


def _const(model: "Model", name: str):
    return model.weights.get(name) if name else None


def _selects_token0(model: "Model", node, current: str) -> bool:
    if node.op_type == "Gather" and node.input[0] == current:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        index = _const(model, node.input[1]) if len(node.input) > 1 else None
        if index is None:
            index = _scalar_constant(model, node.input[1])
        return axis == 1 and index is not None and np.size(index) == 1 and int(np.ravel(index)[0]) == 0
    if node.op_type == "Slice" and node.input[0] == current and len(node.input) >= 3:
        starts, ends = _scalar_constant(model, node.input[1]), _scalar_constant(model, node.input[2])
        axes = _scalar_constant(model, node.input[3]) if len(node.input) > 3 else np.array([0])
        if starts is None or ends is None or axes is None:
            return False
        return list(np.ravel(axes)) == [1] and int(np.ravel(starts)[0]) == 0 and int(np.ravel(ends)[0]) == 1
    return False


def _scalar_constant(model: "Model", name: str):
    """A constant's value, scalars included (Model.weights skips scalar Constant nodes)."""
    if name in model.weights:
        return model.weights[name]
    node = model.producers.get(name)
    if node is not None and node.op_type == "Constant":
        from onnx import numpy_helper
        attr = next((a for a in node.attribute if a.name == "value"), None)
        return numpy_helper.to_array(attr.t) if attr is not None else None
    init = next((t for t in model.proto.graph.initializer if t.name == name), None)
    if init is not None:
        from onnx import numpy_helper
        return numpy_helper.to_array(init)
    return None


def _per_token_matmul(model: "Model", node, current: str) -> bool:
    """MatMul/Gemm of the tokens with a weight: each token on its own."""
    return node.op_type in ("MatMul", "Gemm") and node.input[0] == current and \
        all(i in model.weights or i not in model.input_dependent for i in node.input[1:] if i)


def _last_axis_op(model: "Model", node) -> bool:
    """Softmax or a reduction over the last (channel) axis only: per token."""
    if node.op_type not in ("Softmax", "ReduceMean", "ReduceSum", "ReduceMax", "LogSoftmax"):
        return False
    axes = next((list(a.ints) if a.ints else [a.i] for a in node.attribute if a.name in ("axes", "axis")), None)
    if axes is None and len(node.input) > 1:
        value = _scalar_constant(model, node.input[1])
        axes = None if value is None else [int(v) for v in np.ravel(value)]
    return axes in ([-1], [2])


def pick(model: "Model", output: str, keep: Callable[["TensorInfo"], bool] | None = None) -> tuple[str, str]:
    """(tensor name, why) of the last candidate not read only at its class token that passes `keep` (the probe,
    tried on at most MAX_PROBES tensors); with no `keep`, the graph's own choice (Model.auto_layer)."""
    found = candidates(model, output)
    if not found:
        raise TensorNameError(f"The model has no spatial tensor on the path to output '{output}'; "
                              "name a layer explicitly (see `onnxplain inspect --spatial`).")
    skipped: list[str] = []
    head = head_tensors(model, output)
    if head and any(info.name not in head for info in found):
        dropped = [info.name for info in found if info.name in head]
        found = [info for info in found if info.name not in head]
        if dropped:
            names = ", ".join(f"'{n}'" for n in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
            skipped.append(f"the detection head's {len(dropped)} maps (prediction convs, their decoding and "
                           f"branches: {names}; not feature layers)")
    for info in found:
        if info.layout == "tokens" and class_token_only(model, info.name):
            skipped.append(f"'{info.name}' (read only at the class token)")
            continue
        if keep is not None and len(skipped) < MAX_PROBES and not keep(info):
            skipped.append(f"'{info.name}' (zeroing its positions does not change the target's score)")
            continue
        kind = "token grid %dx%d" % info.grid if info.layout == "tokens" else f"{info.layout} map"
        why = f"last spatial tensor ({kind}, op {info.op_type}) on the path to output '{output}'"
        if head:
            why = f"guessed: the last feature map before the detection head ({kind}, op {info.op_type}) on the " \
                  f"path to output '{output}'"
        if skipped:
            why += " whose positions the target depends on; skipped " + ", ".join(skipped)
        log.info("auto layer %s: %s", info.name, why)
        return info.name, why
    first = found[0]
    return first.name, (f"last spatial tensor on the path to output '{output}'; no tensor passed the check "
                        f"(skipped {', '.join(skipped)})")
