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

import torch

from ..graph import bias_layers
from . import register
from .base import Method, NoParams, RawMaps
from .layout import input_to_nchw_torch
from .perturb import batches
from .torch_common import gradients, minmax, numpy_maps, to_tensor, upsample


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
