"""Normalisations: BatchNormalization (inference), Instance/Layer/Group normalisation, LRN, LpNormalization."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..registry import register


@register("BatchNormalization")
def batch_normalization(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                        var: torch.Tensor, *, epsilon: float = 1e-5, momentum: float = 0.9, spatial: int = 1,
                        training_mode: int = 0, is_test: int = 1, consumed_inputs=None, output_count: int = 1):
    """Batch norm with the stored statistics or, with training_mode=1, the batch's own (then also the
    updated running mean and variance, momentum-weighted as the spec says).

    Statistics that require grad (a module built with requires_grad=True) take the
    explicit formula, since torch's batch_norm refuses gradients for running stats."""
    if training_mode:
        return batch_normalization_training(x, scale, bias, mean, var, epsilon, momentum, output_count)
    if scale.dim() == 1 and not (mean.requires_grad or var.requires_grad):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)
    # explicit form; also spatial=0 (opset < 9) with per-element statistics of shape C x D1 x ...
    shape = (-1,) + (1,) * (x.dim() - 2) if scale.dim() == 1 else tuple(scale.shape)
    mean, var, scale, bias = (t.reshape(shape) for t in (mean, var, scale, bias))
    return (x - mean) / torch.sqrt(var + epsilon) * scale + bias


def batch_normalization_training(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                                 var: torch.Tensor, epsilon: float, momentum: float, output_count: int):
    """Training-mode batch norm: Y from the batch statistics (population variance), plus running stats."""
    axes = (0,) + tuple(range(2, x.dim()))
    shape = (-1,) + (1,) * (x.dim() - 2)
    batch_mean = x.mean(axes)
    batch_var = x.var(axes, correction=0)
    y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + epsilon) * scale.reshape(shape) \
        + bias.reshape(shape)
    if output_count == 1:
        return y
    return (y, mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum))


@register("InstanceNormalization")
def instance_normalization(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *,
                           epsilon: float = 1e-5) -> torch.Tensor:
    """Normalise each channel of each sample over its spatial axes."""
    return F.instance_norm(x, weight=scale, bias=bias, eps=epsilon)


@register("LayerNormalization", since=17)
def layer_normalization(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                        axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1, output_count: int = 1):
    """Normalise over the axes from `axis` to the end; Mean and InvStdDev (kept dims) when the node names them."""
    axis = axis + x.dim() if axis < 0 else axis
    shape = tuple(x.shape[axis:])
    if output_count == 1:
        if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
            return F.layer_norm(x, shape, scale, bias, epsilon)
        y = F.layer_norm(x, shape, None, None, epsilon) * scale
        return y if bias is None else y + bias
    axes = tuple(range(axis, x.dim()))
    mean = x.mean(axes, keepdim=True)
    inv_std = torch.rsqrt((x - mean).square().mean(axes, keepdim=True) + epsilon)
    y = (x - mean) * inv_std * scale
    return (y if bias is None else y + bias), mean, inv_std


@register("GroupNormalization", since=18, until=20)
def group_normalization_18(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, epsilon: float = 1e-5,
                           num_groups: int, stash_type: int = 1) -> torch.Tensor:
    """Group norm before opset 21: scale and bias hold one value per group."""
    repeat = x.shape[1] // num_groups
    return F.group_norm(x, num_groups, scale.repeat_interleave(repeat), bias.repeat_interleave(repeat), epsilon)


@register("GroupNormalization", since=21)
def group_normalization(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, epsilon: float = 1e-5,
                        num_groups: int, stash_type: int = 1) -> torch.Tensor:
    """Group norm with per-channel scale and bias."""
    return F.group_norm(x, num_groups, scale, bias, epsilon)


@register("LRN")
def lrn(x: torch.Tensor, *, alpha: float = 0.0001, beta: float = 0.75, bias: float = 1.0, size: int) -> torch.Tensor:
    """Local response normalisation over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    squared = x.square().reshape(x.shape[0], 1, x.shape[1], -1, 1)
    squared = F.pad(squared, (0, 0, 0, 0, (size - 1) // 2, math.ceil((size - 1) / 2)))
    total = F.avg_pool3d(squared, (size, 1, 1), stride=1, divisor_override=1).reshape(x.shape)
    return x / (bias + alpha / size * total).pow(beta)


@register("LpNormalization")
def lp_normalization(x: torch.Tensor, *, axis: int = -1, p: int = 2) -> torch.Tensor:
    """x divided by its Lp norm along `axis` (a zero vector stays zero, as the spec says)."""
    norm = torch.linalg.vector_norm(x, ord=p, dim=axis, keepdim=True)
    return x / torch.where(norm == 0, torch.ones_like(norm), norm)


@register("MeanVarianceNormalization", since=9)
def mean_variance_normalization(x: torch.Tensor, *, axes=(0, 2, 3)) -> torch.Tensor:
    """(x - mean) / sqrt(var) over `axes` (epsilon 1e-9, as the ONNX function body)."""
    axes = tuple(axes)
    centred = x - x.mean(axes, keepdim=True)
    return centred / (centred.square().mean(axes, keepdim=True).sqrt() + 1e-9)
