"""FullGrad (Srinivas & Fleuret, 2019) on the converted torch module: the full-gradient decomposition.

For a network made of piecewise-linear ops, the target score is exactly
    f(x) = sum(x * df/dx) + sum over every bias b of sum(b * df/dz_b)
where z_b is the tensor b is added into. The biases are the explicit ones (Conv/ConvTranspose/Gemm
biases, BatchNormalization's effective bias, constants added or subtracted by Add/Sub) and the
implicit ones of saturating activations: a unit of Clip (ReLU6) or HardSigmoid outside its linear
range outputs a constant, which is its bias; HardSigmoid's linear range adds `beta`. Relu, LeakyRelu
and PRelu have no bias (their local maps are y = slope * x). `extras["completeness"]` compares the
sum of all terms with the score (exact for piecewise-linear nets; Softmax targets, HardSwish or
non-zero padding values leave a gap, which it shows).

mode "complete" (the paper's code): |x * grad| and every spatial |b * grad| map are each min-max
scaled over the whole map (all channels), summed over channels, upsampled and summed.
mode "pytorch-grad-cam": the input map plus the maps of Conv and BatchNormalization biases only,
each *channel* min-max scaled, then the sum min-max scaled, as pytorch-grad-cam computes it
(the implicit biases of saturated ReLU6 units are missing there).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import graph
from ..graph import bias_layers
from . import register
from .base import Method, RawMaps
from .layout import channels_first_torch, input_to_nchw_torch
from .perturb import batches, choose
from .torch_common import gradients, minmax, numpy_maps, to_tensor, upsample

if TYPE_CHECKING:
    from ..model import Model

MODES = ("complete", "pytorch-grad-cam")


@dataclass(frozen=True)
class BiasTerm:
    """One bias of the decomposition: the tensor it is added into, the op, and how to get its value:
    `values` (explicit, broadcastable after `axis`) or from the op's input `source` (implicit)."""
    tensor: str
    op: str
    values: np.ndarray | None = None
    axis: int | None = None          # values are per-channel on this axis (Conv, BatchNorm); None: broadcast
    source: str | None = None        # Clip / HardSigmoid input
    bounds: tuple = ()               # Clip (low, high); HardSigmoid (alpha, beta)

    def value(self, y: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """The bias tensor (shape of y) at this forward pass."""
        if self.op == "Clip":
            low, high = self.bounds
            linear = (x > low) & (x < high)
            return torch.where(linear, torch.zeros_like(y), y)
        if self.op == "HardSigmoid":
            alpha, beta = self.bounds
            z = alpha * x + beta
            return torch.where((z > 0) & (z < 1), torch.full_like(y, beta), y)
        b = torch.as_tensor(self.values, dtype=y.dtype, device=y.device)
        if self.axis is not None:
            b = b.reshape((1, -1) + (1,) * (y.dim() - 2))
        return torch.broadcast_to(b, y.shape)


def bias_terms(model: "Model") -> list[BiasTerm]:
    """Every explicit and implicit bias of the graph's input-dependent ops, in graph order."""
    found = []
    for node in model.proto.graph.node:
        out = node.output[0] if node.output else ""
        if out not in model.input_dependent:
            continue
        term = _term(model, node, out)
        if term is not None:
            found.append(term)
    return found


def _term(model: "Model", node, out: str) -> BiasTerm | None:
    op, inputs = node.op_type, list(node.input)
    if op in ("Conv", "ConvTranspose") and len(inputs) > 2 and inputs[2]:
        b = graph.constant(model, inputs[2])
        return None if b is None else BiasTerm(out, op, np.array(b, np.float32).reshape(-1), axis=1)
    if op == "Gemm":
        b = graph.gemm_bias(model, node)
        return None if b is None else BiasTerm(out, op, np.array(b, np.float32))
    if op == "BatchNormalization":
        parts = [graph.constant(model, name) for name in inputs[1:5]]
        if any(p is None for p in parts):
            return None
        scale, shift, mean, var = (np.asarray(p, np.float64).reshape(-1) for p in parts)
        eps = graph.attr_float(node, "epsilon", 1e-5)
        return BiasTerm(out, op, (shift - mean * scale / np.sqrt(var + eps)).astype(np.float32), axis=1)
    if op in ("Add", "Sub") and len(inputs) == 2:
        consts = [graph.constant(model, name) if name not in model.input_dependent else None for name in inputs]
        if consts[0] is None and consts[1] is not None:
            sign = -1.0 if op == "Sub" else 1.0
            return BiasTerm(out, op, sign * np.array(consts[1], np.float32))
        if consts[1] is None and consts[0] is not None:  # k + x, or k - x (bias k either way)
            return BiasTerm(out, op, np.array(consts[0], np.float32))
        return None
    if op == "Clip":
        low, high = _clip_bounds(model, node)
        return BiasTerm(out, op, source=inputs[0], bounds=(low, high)) if np.isfinite([low, high]).any() else None
    if op == "HardSigmoid":
        alpha, beta = graph.attr_float(node, "alpha", 0.2), graph.attr_float(node, "beta", 0.5)
        return BiasTerm(out, op, source=inputs[0], bounds=(alpha, beta))
    return None


def _clip_bounds(model: "Model", node) -> tuple[float, float]:
    """Clip's (min, max) from inputs (opset 11+) or attributes; missing bounds are infinite."""
    bounds = []
    for index, name, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if len(node.input) > index and node.input[index]:
            value = graph.constant(model, node.input[index])
            bounds.append(default if value is None else float(np.asarray(value).reshape(-1)[0]))
        else:
            bounds.append(graph.attr_float(node, name, default))
    return bounds[0], bounds[1]


def whole_minmax(maps: torch.Tensor) -> torch.Tensor:
    """|maps| (N, C, h, w) scaled to [0, 1] per image over all channels and positions, as the paper's code."""
    return minmax(maps.abs(), dims=3)


@register
class FullGrad(Method):
    """Srinivas & Fleuret (2019): input-gradient plus bias-gradient maps of every bias, explicit and implicit.

    Ignores the layer argument: every bias contributes. extras: `completeness` (the decomposition against
    the score) and `bias_terms` (the sum of each op type's bias terms).
    """
    name = "fullgrad"
    engine = "torch"
    summary = "FullGrad: |input x grad| plus |bias x grad| of every bias (implicit ReLU6/HardSigmoid ones too)"

    @dataclass(frozen=True)
    class Params:
        mode: str = "complete"   # complete (the paper: every bias, whole-map scaling) | pytorch-grad-cam (parity)

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        choose(self.name, "mode", self.params.mode, MODES)
        model = context.model
        terms = bias_terms(model)
        legacy = bias_layers(model) if self.params.mode == "pytorch-grad-cam" else []
        taps = list(dict.fromkeys([t.tensor for t in terms] + [t.source for t in terms if t.source]
                                  + [b.tensor for b in legacy]))
        maps, extras = [], []
        for rows in batches(len(batch), context.runtime.batch_size):
            x = to_tensor(context, batch.x[rows])
            result = gradients(context, x, targets[rows], taps=taps)
            products = [(t, result.taps[t.tensor] * t.value(result.values[t.tensor], result.values.get(t.source)))
                        for t in terms]
            extras.extend(_completeness(x * result.input, products, result.scores))
            if legacy:
                maps.append(_grad_cam_map(x, result, legacy, batch))
            else:
                maps.append(_paper_map(model, x * result.input, products, batch))
        return RawMaps(numpy_maps(torch.cat(maps)), extras)


def _paper_map(model: "Model", input_term: torch.Tensor, products: list, batch) -> torch.Tensor:
    """The paper's saliency: scaled |x * grad| plus every spatial bias map, scaled over the whole map."""
    total = whole_minmax(input_to_nchw_torch(input_term, batch.spec.layout)).sum(1)
    for term, product in products:
        info = model.tensors.get(term.tensor)
        if info is None or info.layout not in ("NCHW", "NHWC") or product.dim() != 4:
            continue  # no spatial extent (Gemm, pooled vectors): in the completeness sum only
        total = total + upsample(whole_minmax(channels_first_torch(product, info)).sum(1), batch.hw)
    return total


def _grad_cam_map(x: torch.Tensor, result, legacy, batch) -> torch.Tensor:
    """pytorch-grad-cam's FullGrad: per-channel scaled |x grad| and Conv/BatchNorm |b grad| maps, scaled sum."""
    inputs = input_to_nchw_torch((x * result.input).abs(), batch.spec.layout)
    total = minmax(inputs).sum(1)
    for bias in legacy:
        grad = result.taps[bias.tensor]
        values = torch.as_tensor(bias.values, device=grad.device, dtype=grad.dtype)
        per_channel = minmax((grad * values.view(1, -1, 1, 1)).abs())
        # resizing is linear: summing channels first gives the same as resizing each channel
        total = total + upsample(per_channel.sum(1), batch.hw)
    return minmax(total)


def _completeness(input_term: torch.Tensor, products: list, scores: torch.Tensor) -> list[dict]:
    """Per image: the input term, the bias terms by op type, their sum and the score it should equal."""
    rows = []
    for i in range(len(scores)):
        by_op: dict[str, float] = {}
        for term, product in products:
            by_op[term.op] = by_op.get(term.op, 0.0) + float(product[i].double().sum())
        inputs = float(input_term[i].double().sum())
        total = inputs + sum(by_op.values())
        score = float(scores[i])
        rows.append({"bias_terms": by_op, "completeness": {
            "input": inputs, "biases": total - inputs, "sum": total, "output": score,
            "error": abs(total - score), "relative_error": abs(total - score) / max(abs(score), 1e-12)}})
    return rows
