"""FullGrad (Srinivas & Fleuret, 2019) on the converted torch module, as pytorch-grad-cam computes it.

The input-gradient map |x * dy/dx| plus, for every Conv (and surviving BatchNormalization)
with a bias, the bias-gradient map |b * dy/dz| where z is that op's output tensor. Every
channel of every map is min-max scaled and upsampled to the input size, the maps are
summed, and the sum is min-max scaled again.

The exporters fold eval-mode BatchNorm into the preceding Conv, so a Conv (no bias) +
BatchNorm pair of the torch model is one biased Conv here whose bias is BatchNorm's
effective bias: the same map as pytorch-grad-cam's. A Conv that has its own bias *and*
a folded BatchNorm gives one map from the folded bias where pytorch-grad-cam gives two.
Gemm (fully connected) biases have no spatial extent; their maps are constant, which the
per-map scaling turns into zero, so they are left out, as pytorch-grad-cam leaves them out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from . import register
from .base import Method, NoParams, RawMaps
from .layout import input_to_nchw_torch
from .perturb import batches
from .torch_common import gradients, minmax, numpy_maps, to_tensor, upsample

if TYPE_CHECKING:
    from ..model import Model


@dataclass(frozen=True)
class Bias:
    """A bias added by one node: the tensor it is added into (N, C, h, w) and the bias values (C,)."""
    tensor: str
    values: np.ndarray


def _attr(node: onnx.NodeProto, name: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def bias_layers(model: "Model") -> list[Bias]:
    """Every Conv/ConvTranspose with a constant bias and every BatchNormalization (effective bias) whose output
    is a 4-D map, in graph order."""
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
            eps = _attr(node, "epsilon", 1e-5)
            found.append(Bias(out, (shift - mean * scale / np.sqrt(var + eps)).astype(np.float32)))
    return found


@register
class FullGrad(Method):
    """Srinivas & Fleuret (2019): input-gradient plus bias-gradient maps of every Conv/BatchNorm, as pytorch-grad-cam.

    Ignores the layer argument: every biased convolution contributes.
    """
    name = "fullgrad"
    engine = "torch"
    summary = "FullGrad: |input x grad| plus |bias x grad| of every conv, each scaled, upsampled and summed"
    Params = NoParams

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        biases = bias_layers(context.model)
        taps = [b.tensor for b in biases]
        hw = batch.hw
        maps = []
        for rows in batches(len(batch), context.runtime.batch_size):
            x = to_tensor(context, batch.x[rows])
            result = gradients(context, x, targets[rows], taps=taps)
            inputs = input_to_nchw_torch((x * result.input).abs(), batch.spec.layout)
            total = minmax(inputs).sum(1)
            for bias in biases:
                grad = result.taps[bias.tensor]
                values = torch.as_tensor(bias.values, device=grad.device, dtype=grad.dtype)
                per_channel = minmax((grad * values.view(1, -1, 1, 1)).abs())
                # resizing is linear: summing channels first gives the same as resizing each channel
                total = total + upsample(per_channel.sum(1), hw)
            maps.append(minmax(total))
        return RawMaps(numpy_maps(torch.cat(maps)), [{"bias_maps": len(biases)} for _ in range(len(batch))])
