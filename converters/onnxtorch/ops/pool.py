"""MaxPool, AveragePool, LpPool and the global pools.

onnxruntime sizes ceil_mode outputs like torch (a last window must start inside
the input or its begin pad), so symmetric pads go straight to torch; asymmetric
or oversized pads are applied explicitly and the result cropped to that size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModel
from ..checks import refuses
from ..registry import register
from .conv import CONV, resolve_pads, torch_pad_order

MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def pool_output_sizes(sizes, kernel, strides, dilations, pads, ceil_mode: bool) -> list[int]:
    """Output lengths as onnxruntime computes them."""
    n = len(kernel)
    out = []
    for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        span = size + pads[i] + pads[i + n] - ((k - 1) * d + 1)
        length = (math.ceil(span / s) if ceil_mode else span // s) + 1
        if ceil_mode and (length - 1) * s >= size + pads[i]:
            length -= 1
        out.append(length)
    return out


def crop_to(y: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The leading `sizes` positions of y's spatial axes."""
    if list(y.shape[2:]) == sizes:
        return y
    return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)]


def direct_padding(pads: list[int], kernel, dilations) -> list[int] | None:
    """The symmetric padding torch's pools accept for these pads, or None when they must be explicit."""
    n = len(kernel)
    begins, ends = pads[:n], pads[n:]
    if begins != ends or any(p > ((k - 1) * d + 1) // 2 for p, k, d in zip(begins, kernel, dilations)):
        return None
    return begins


def pool_geometry(x: torch.Tensor, kernel_shape, strides, dilations, pads, auto_pad):
    """Kernel, strides, dilations and explicit pads of a pool node for this input."""
    n = len(kernel_shape)
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    return list(kernel_shape), strides, dilations, resolve_pads(x, kernel_shape, strides, dilations, pads, auto_pad)


def max_pool_refusal(inputs: list, *, output_count: int = 1, auto_pad: str = "NOTSET", pads=None,
                     kernel_shape=(), storage_order: int = 0, **_) -> str | None:
    """The Indices output is computed for symmetric explicit pads (and storage_order 1 in 2-D) only."""
    if output_count < 2:
        return None
    n = len(kernel_shape)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") or (pads and list(pads[:n]) != list(pads[n:])):
        return "asks for indices with asymmetric or automatic pads, which the converter does not compute"
    if storage_order and n != 2:
        return "asks for column-major indices of a pooling that is not 2-D"
    return None


def window_sum(padded: torch.Tensor, kernel, strides, dilations, sizes: list[int]) -> torch.Tensor:
    """Sum of each dilated window of an already padded input (a depthwise conv with ones), `sizes` long;
    windows that ceil_mode lets run past the end read zeros."""
    n = len(kernel)
    extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - size)
             for o, s, k, d, size in zip(sizes, strides, kernel, dilations, padded.shape[2:])]
    padded = F.pad(padded, torch_pad_order([0] * n + extra))
    channels = padded.shape[1]
    weight = torch.ones((channels, 1) + tuple(kernel), dtype=padded.dtype, device=padded.device)
    return crop_to(CONV[n](padded, weight, None, strides, 0, dilations, channels), sizes)


@refuses(max_pool_refusal)
@register("MaxPool")
def max_pool(x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0, dilations=None, kernel_shape=None,
             pads=None, storage_order: int = 0, strides=None, output_count: int = 1):
    """ONNX MaxPool; the optional Indices output is the flat index into the input, as onnxruntime gives it."""
    kernel, strides, dilations, pads = pool_geometry(x, kernel_shape, strides, dilations, pads, auto_pad)
    n = len(kernel)
    sizes = pool_output_sizes(x.shape[2:], kernel, strides, dilations, pads, bool(ceil_mode))
    padding = direct_padding(pads, kernel, dilations)
    if output_count > 1:
        if padding is None or (storage_order != 0 and n != 2):
            raise UnsupportedModel("MaxPool indices are supported for symmetric pads (and storage_order 1 "
                                   "in 2-D) only")
        y, idx = MAX_POOL[n](x, kernel, strides, padding, dilations, bool(ceil_mode), return_indices=True)
        if storage_order:  # column-major position within the plane
            height, width = x.shape[2:]
            idx = (idx % width) * height + idx // width
        plane = math.prod(x.shape[2:])
        offset = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1], *[1] * n)
        return crop_to(y, sizes), crop_to(idx + offset * plane, sizes)
    if padding is None:
        x = F.pad(x, torch_pad_order(pads), value=-math.inf)
        padding = 0
    return crop_to(MAX_POOL[n](x, kernel, strides, padding, dilations, bool(ceil_mode)), sizes)


@register("AveragePool")
def average_pool(x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0, count_include_pad: int = 0,
                 dilations=None, kernel_shape=None, pads=None, strides=None) -> torch.Tensor:
    """ONNX AveragePool; with explicit pads and count_include_pad=0 the divisor counts input cells only."""
    kernel, strides, dilations, pads = pool_geometry(x, kernel_shape, strides, dilations, pads, auto_pad)
    n = len(kernel)
    sizes = pool_output_sizes(x.shape[2:], kernel, strides, dilations, pads, bool(ceil_mode))
    if any(d != 1 for d in dilations):
        order = torch_pad_order(pads)
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
        cells = F.pad(ones, order, value=1.0 if count_include_pad else 0.0)
        return (window_sum(F.pad(x, order), kernel, strides, dilations, sizes)
                / window_sum(cells, kernel, strides, dilations, sizes))
    pool = AVG_POOL[n]
    padding = direct_padding(pads, kernel, dilations)
    if padding is not None:
        y = pool(x, kernel, strides, padding, bool(ceil_mode), bool(count_include_pad))
        return crop_to(y, sizes)
    order = torch_pad_order(pads)
    y = pool(F.pad(x, order), kernel, strides, 0, bool(ceil_mode), True)
    if not count_include_pad:
        ones = F.pad(torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device), order)
        y = y / pool(ones, kernel, strides, 0, bool(ceil_mode), True)
    return crop_to(y, sizes)


@register("LpPool")
def lp_pool(x: torch.Tensor, *, auto_pad: str = "NOTSET", ceil_mode: int = 0, dilations=None, kernel_shape=None,
            p: int = 2, pads=None, strides=None) -> torch.Tensor:
    """ONNX LpPool: (sum over the window of |x|^p)^(1/p), zero pads."""
    kernel, strides, dilations, pads = pool_geometry(x, kernel_shape, strides, dilations, pads, auto_pad)
    sizes = pool_output_sizes(x.shape[2:], kernel, strides, dilations, pads, bool(ceil_mode))
    if any(d != 1 for d in dilations):
        powered = F.pad(x.abs().pow(p), torch_pad_order(pads))
        return window_sum(powered, kernel, strides, dilations, sizes).pow(1.0 / p)
    powered = F.pad(x.abs().pow(p), torch_pad_order(pads))
    if len(kernel) == 1:  # avg_pool1d has no divisor_override
        powered, kernel, strides = powered.unsqueeze(-1), kernel + [1], strides + [1]
    summed = AVG_POOL[len(kernel)](powered, kernel, strides, 0, bool(ceil_mode), True, 1)
    if summed.dim() > x.dim():
        summed = summed.squeeze(-1)
    return crop_to(summed.pow(1.0 / p), sizes)


@register("GlobalAveragePool")
def global_average_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over every spatial axis, kept as size-1 axes."""
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def global_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Max over every spatial axis, kept as size-1 axes."""
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalLpPool")
def global_lp_pool(x: torch.Tensor, *, p: int = 2) -> torch.Tensor:
    """Lp norm over every spatial axis, kept as size-1 axes."""
    return x.abs().pow(p).sum(dim=tuple(range(2, x.dim())), keepdim=True).pow(1.0 / p)
