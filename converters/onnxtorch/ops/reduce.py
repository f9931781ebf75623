"""Reductions. Axes are an attribute before opset 18 (ReduceSum: before 13) and an optional input
after; the same function serves both forms because the parameter keeps the name `axes`."""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..registry import register
from .common import axis_list, ints


def reduce(x: torch.Tensor, axes, keepdims: int, noop_with_empty_axes: int,
           fn: Callable[[torch.Tensor, tuple, bool], torch.Tensor],
           elementwise: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """fn over the listed axes; no axes means every axis or, with noop_with_empty_axes, a reduction over
    no axis at all: x itself after the op's elementwise part (|x| for L1/L2, x^2, log), as onnxruntime."""
    axes = ints(axes)
    if not axes:
        if noop_with_empty_axes:
            return elementwise(x) if elementwise is not None else x
        axes = None
    return fn(x, tuple(axis_list(axes, x.dim())), bool(keepdims))


def extreme_over(x: torch.Tensor, axes: tuple | None, keepdim: bool, largest: bool) -> torch.Tensor:
    """amax/amin; over an empty axis the result is the identity of the reduction (-inf for max, +inf for min,
    the integer type's bounds), as the spec says, where torch raises."""
    dims = tuple(range(x.dim())) if axes is None else axes
    if all(x.shape[a] > 0 for a in dims):
        return x.amax(dims, keepdim=keepdim) if largest else x.amin(dims, keepdim=keepdim)
    shape = [1 if a in dims else n for a, n in enumerate(x.shape) if keepdim or a not in dims]
    info = torch.finfo(x.dtype) if x.is_floating_point() else torch.iinfo(x.dtype)
    fill = (-math.inf if largest else math.inf) if x.is_floating_point() else (info.min if largest else info.max)
    return torch.full(shape, fill, dtype=x.dtype, device=x.device)


def prod_over(x: torch.Tensor, axes: tuple, keepdim: bool) -> torch.Tensor:
    """Product over several axes (torch.prod takes one)."""
    for axis in sorted(axes, reverse=True):
        x = x.prod(axis, keepdim=keepdim)
    return x


@register("ReduceSum")
def reduce_sum(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Sum over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: t.sum(a, keepdim=k))


@register("ReduceMean")
def reduce_mean(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Mean over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: t.mean(a, keepdim=k))


@register("ReduceMax")
def reduce_max(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Maximum over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: extreme_over(t, a, k, True))


@register("ReduceMin")
def reduce_min(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Minimum over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: extreme_over(t, a, k, False))


@register("ReduceProd")
def reduce_prod(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Product over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, prod_over)


@register("ReduceL1")
def reduce_l1(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Sum of absolute values over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: t.abs().sum(a, keepdim=k),
                  torch.abs)


@register("ReduceL2")
def reduce_l2(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Euclidean norm over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes,
                  lambda t, a, k: torch.linalg.vector_norm(t, 2, a, keepdim=k), torch.abs)


@register("ReduceSumSquare")
def reduce_sum_square(x: torch.Tensor, axes=None, *, keepdims: int = 1,
                      noop_with_empty_axes: int = 0) -> torch.Tensor:
    """Sum of squares over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: t.square().sum(a, keepdim=k),
                  torch.square)


@register("ReduceLogSum")
def reduce_log_sum(x: torch.Tensor, axes=None, *, keepdims: int = 1, noop_with_empty_axes: int = 0) -> torch.Tensor:
    """log of the sum over axes."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: t.sum(a, keepdim=k).log(),
                  torch.log)


@register("ReduceLogSumExp")
def reduce_log_sum_exp(x: torch.Tensor, axes=None, *, keepdims: int = 1,
                       noop_with_empty_axes: int = 0) -> torch.Tensor:
    """log(sum(exp(x))) over axes, computed stably."""
    return reduce(x, axes, keepdims, noop_with_empty_axes, lambda t, a, k: torch.logsumexp(t, a, keepdim=k))
