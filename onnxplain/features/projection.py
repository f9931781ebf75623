"""Zeiler & Fergus projections: one neuron's activation backpropagated to the input pixels.

A neuron is (layer, channel, row, col). Its value is differentiated with respect to the model input
under the converter's relu rule: "deconvnet" (Zeiler & Fergus 2014: ReLUs pass back only positive
signal, whatever the forward input) or "guided" (Springenberg et al. 2015: positive signal at positive
input). Every other neuron of the layer gets no gradient, as in the paper's figure 2, where all other
activations of the layer are set to zero before the projection.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..methods.layout import channels_first_torch, input_to_nchw_np
from .common import FeatureError

if TYPE_CHECKING:
    from ..explainer import Explainer

RULES = {"deconvnet": "deconvnet", "guided": "guided"}


def project_neuron(explainer: "Explainer", x: np.ndarray, layout: str, layer: str, channel: int,
                   position: tuple[int, int], rule: str) -> np.ndarray:
    """(C, H, W) gradient of neuron (channel, row, col) of `layer` for the one prepared input `x` (a batch of 1
    in the model's `layout`, NCHW or NHWC) with respect to that input, under `rule` (deconvnet | guided)."""
    import torch

    from ..methods.torch_common import forward, to_tensor
    if rule not in RULES:
        raise FeatureError(f"Unknown projection '{rule}'; use deconvnet or guided.")
    info = explainer.model.spatial_info(layer)
    module = explainer.module
    inputs = to_tensor(explainer, x).detach().requires_grad_(True)
    with torch.enable_grad(), module.relu_rule(RULES[rule]):
        _, tapped = forward(explainer, inputs, [layer])
        value = channels_first_torch(tapped[layer], info)[0, channel, position[0], position[1]]
        (grad,) = torch.autograd.grad(value, [inputs], allow_unused=True)
    if grad is None:
        return np.zeros(input_to_nchw_np(x, layout)[0].shape, np.float32)
    return input_to_nchw_np(grad.detach().cpu().numpy(), layout)[0].astype(np.float32)
