"""Conv kernels as pictures: the first conv layer's filters in colour, deeper ones per input channel in gray.

Weights are read from the model wherever the exporter kept them (initializers, Constant
nodes, Identity of a weight). A first-layer filter is shown in RGB whatever colour order
the model takes (the preset's `order`), so a filter tuned to red looks red.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import render
from ..errors import TensorNameError
from ..graph import attr, constant

if TYPE_CHECKING:
    import onnx

    from ..explainer import Explainer
    from ..model import Model

CONV_OPS = ("Conv", "ConvTranspose")
# Ops between a Conv and the tensor a user may name for it (activation, folded norm, bias).
BETWEEN = {"Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
           "Softplus", "Mul", "Add", "BatchNormalization", "Identity", "Mish", "Gelu"}


@dataclass
class FilterGrid:
    """Kernel tiles of one conv, as RGB uint8 images, ready for render.grid."""
    layer: str           # the tensor the user asked for
    conv: str            # the Conv node's name (or its output when unnamed)
    weight: str          # the weight's tensor name
    shape: tuple[int, ...]
    colour: bool         # first layer: one colour tile per filter; else one gray tile per (filter, input channel)
    tiles: list[np.ndarray]
    labels: list[str]
    columns: int

    def image(self, tile_size: int = 32) -> np.ndarray:
        """The tiles in a labelled grid."""
        return render.grid(self.tiles, columns=self.columns, labels=self.labels, tile_size=tile_size)

    def as_dict(self) -> dict:
        return {"layer": self.layer, "conv": self.conv, "weight": self.weight, "shape": list(self.shape),
                "colour": self.colour, "tiles": len(self.tiles)}


def find_conv(model: "Model", layer: str | None = None) -> "onnx.NodeProto":
    """The Conv node behind a layer (through activations and folded norms), or the model's first Conv."""
    if layer is None:
        node = next((n for n in model.proto.graph.node
                     if n.op_type in CONV_OPS and n.input[0] in model.input_dependent), None)
        if node is None:
            raise TensorNameError("The model has no Conv layer, so there are no filters to show.")
        return node
    name = model.resolve_layer(layer)
    node = model.producers.get(name)
    while node is not None and node.op_type not in CONV_OPS and node.op_type in BETWEEN:
        node = model.producers.get(next((i for i in node.input if i in model.input_dependent), ""))
    if node is None or node.op_type not in CONV_OPS:
        op = model.tensors[name].op_type
        raise TensorNameError(f"Layer '{name}' (op {op}) does not come from a Conv; name a Conv output "
                              "(see `onnxplain inspect`) or leave the layer out for the first conv.")
    return node


def is_first_conv(model: "Model", node: "onnx.NodeProto") -> bool:
    """True when no other Conv lies between the model input and this Conv."""
    before = model.ancestors(node.input[0])
    return not any(model.producers[t].op_type in CONV_OPS for t in before if t in model.producers)


def filters(explainer: "Explainer", layer: str | None = None, max_filters: int = 64,
            max_inputs: int = 16) -> FilterGrid:
    """Tiles of a conv's kernels: colour for the first conv on 3 channels, else gray per input channel.

    Gray grids have one row per filter (up to max_filters) and one column per input
    channel (up to max_inputs). Each filter is scaled by its largest |weight|, 0 at mid-gray.
    """
    model = explainer.model
    node = find_conv(model, layer)
    weight_name = node.input[1]
    weight = constant(model, weight_name)
    if weight is None or weight.ndim != 4:
        raise TensorNameError(f"The weights of Conv '{node.name or node.output[0]}' are not a constant 4-D tensor "
                              "(they may be computed at run time); pick another conv.")
    weight = weight.astype(np.float32)
    if node.op_type == "ConvTranspose":
        weight = weight.transpose(1, 0, 2, 3)  # (in, out/group, kh, kw) -> filters first
    group = int(attr(node, "group", 1))
    colour = is_first_conv(model, node) and weight.shape[1] == 3 and group == 1
    shown = weight[:max_filters]
    scale = np.abs(shown).reshape(len(shown), -1).max(axis=1)
    scaled = shown / np.where(scale > 0, scale, 1)[:, None, None, None]
    pixels = np.clip(np.round((scaled + 1) * 127.5), 0, 255).astype(np.uint8)  # -max..max -> 0..255
    if colour:
        tiles = [p.transpose(1, 2, 0) for p in pixels]
        if explainer.preprocess.order == "BGR":
            tiles = [t[:, :, ::-1] for t in tiles]
        labels = [str(o) for o in range(len(tiles))]
        columns = math.ceil(math.sqrt(len(tiles)))
    else:
        inputs = min(weight.shape[1], max_inputs)
        tiles = [np.repeat(p[i][:, :, None], 3, axis=2) for p in pixels for i in range(inputs)]
        labels = [f"{o}:{i}" for o in range(len(pixels)) for i in range(inputs)]
        columns = inputs if inputs > 1 else math.ceil(math.sqrt(len(tiles)))
    return FilterGrid(model.resolve_layer(layer) if layer else node.output[0], node.name or node.output[0],
                      weight_name, tuple(weight.shape), colour, [np.ascontiguousarray(t) for t in tiles], labels,
                      columns)
