"""A detector's head from the graph alone: the tensors the auto layer must not pick on a detector's rows output.

A YOLO/SSD head turns feature maps into rows position by position: prediction convs whose maps reach the
output through reshapes, slices, concatenations and elementwise decoding only (no op that mixes positions or
makes new features), and, where the head has branches of its own (YOLOv8's box and class convs), the convs
after the last tensor several branches share. What comes before is the backbone/neck, where pytorch-grad-cam's
YOLO tutorials take their layer (the last C2f/C3 output, `model.model[-2]`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .graph import readers

if TYPE_CHECKING:
    from .model import Model

# ops that mix positions or channels into new features: a map reaching the output only through these is a feature
FEATURE_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MatMul", "Gemm", "MatMulInteger",
               "QLinearMatMul", "Einsum", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
               "ReduceMean", "ReduceMax", "ReduceSum", "ReduceL2", "Resize", "Upsample", "LSTM", "GRU", "RNN"}
# activations between a head conv and the next one (SiLU is exported as Sigmoid + Mul of the same conv output)
ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Mul", "Clip", "HardSigmoid", "HardSwish", "Elu", "Selu", "Tanh",
               "Softplus", "PRelu", "Identity", "BatchNormalization"}


def head_tensors(model: "Model", output: str) -> dict[str, str]:
    """{tensor: why} of the detection head feeding a non-spatial `output` (rows); empty where the output is a
    map or the model has no prediction conv (a classifier pools its last map before its linear layer)."""
    info = model.tensors.get(output)
    if info is not None and info.spatial:
        return {}
    free, predictions = _prediction_maps(model, output)
    if not predictions:
        return {}
    head = {name: "a prediction map of the detection head" for name in free
            if name != output and name in model.tensors and model.tensors[name].spatial}
    for conv in predictions:
        head.update({name: "a conv branch of the detection head" for name in _branch(model, conv)})
    return head


def _prediction_maps(model: "Model", output: str) -> tuple[set[str], list]:
    """(tensors with a path to the output through no feature op, the Conv nodes that make them)."""
    free, stack, convs = set(), [output], {}
    while stack:
        name = stack.pop()
        if name in free:
            continue
        free.add(name)
        node = model.producers.get(name)
        if node is None:
            continue
        if node.op_type == "Conv":
            convs[node.output[0]] = node
        elif node.op_type not in FEATURE_OPS:
            stack.extend(i for i in node.input if i and i in model.input_dependent)
    return free, list(convs.values())


def _branch(model: "Model", conv) -> list[str]:
    """The conv+activation blocks before a prediction conv that feed only it, where they start at a tensor
    several convs read (a fork into box and class branches); none where the chain starts at a merge or the input."""
    chain, x = [], conv.input[0]
    while len(readers(model, x)) == 1:
        block = _conv_block(model, x)
        if block is None:
            return []  # a merge (Concat, Add), a pooling or the graph input: the network's own layers
        source, tensors = block
        chain += tensors
        x = source.input[0]
    forks = sum(n.op_type == "Conv" for n in readers(model, x))
    return chain if forks >= 2 else []


def _conv_block(model: "Model", x: str):
    """(Conv node, tensors from its output to `x`) where `x` is a Conv output or its activation, else None."""
    tensors, frontier, source = [x], [x], None
    while frontier:
        node = model.producers.get(frontier.pop())
        if node is None:
            return None
        if node.op_type == "Conv":
            if source is not None and source is not node:
                return None
            source = node
            continue
        if node.op_type not in ACTIVATIONS:
            return None
        inputs = [i for i in node.input if i and i in model.input_dependent]
        tensors += [i for i in inputs if i not in tensors]
        frontier += inputs
    if source is None:
        return None
    inside = {model.producers[t].output[0] for t in tensors if t != source.output[0]}
    if any(n.output[0] not in inside for t in tensors if t != x for n in readers(model, t)):
        return None  # the conv output is read outside this block (a residual): not a plain head conv
    return source, tensors
