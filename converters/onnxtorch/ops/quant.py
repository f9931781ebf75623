"""Quantisation ops with straight-through gradients: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear,
QLinearConv, QLinearMatMul, MatMulInteger, ConvInteger.

Forward values are onnxruntime's: round half to even, saturate to the integer type,
accumulate exactly. Backward treats rounding as the identity (the straight-through
estimator) and passes no gradient where a value saturated, so gradient methods run on
int8 models and a ReLU folded into a quantiser's range still gates the gradient. A quantised
tensor that carries a gradient is held as a float tensor of integer values (autograd
needs a float dtype); one that carries none has the exact integer dtype.
"""
from __future__ import annotations

import torch

from ..errors import UnsupportedModel
from ..registry import register
from .common import to_dtype
from .conv import conv
from .tensor import FLOAT8, convert

INTEGER_TYPES = (torch.uint8, torch.int8, torch.uint16, torch.int16, torch.int32)


def integer_type(zero_point: torch.Tensor | None, output_dtype: int = 0, *, float8: bool = False) -> torch.dtype:
    """The quantised type: the zero point's, else the output_dtype attribute's, else uint8 (float8 types
    where the op allows them)."""
    dtype = zero_point.dtype if zero_point is not None else to_dtype(output_dtype) if output_dtype else torch.uint8
    if dtype not in INTEGER_TYPES and not (float8 and dtype in FLOAT8):
        raise UnsupportedModel(f"Quantisation to {dtype} is not supported (8-, 16- and 32-bit integers are)")
    return dtype


def per_axis(value: torch.Tensor, like: torch.Tensor, axis: int, block_size: int = 0) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against `like`: per tensor, per axis, or per block."""
    value = value.to(like.device)
    if value.dim() == 0 or value.numel() == 1:
        return value.reshape(())
    axis = axis + like.dim() if axis < 0 else axis
    if block_size > 0:
        return value.repeat_interleave(block_size, axis).narrow(axis, 0, like.shape[axis])
    shape = [1] * like.dim()
    shape[axis] = -1
    return value.reshape(shape)


def round_through(q: torch.Tensor) -> torch.Tensor:
    """q rounded half to even; in backward the rounding is the identity (the straight-through estimator)."""
    if not q.requires_grad:
        return q.round()
    return q + (q.detach().round() - q.detach())


def saturate(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Integer values q clamped to `dtype`'s range: in that dtype, or float-held when q carries a gradient
    (zero gradient where q is clipped, as torch's fake_quantize, since quantisers often stand in for a ReLU
    or ReLU6 folded into the zero point and range)."""
    info = torch.iinfo(dtype)
    q = q.clamp(info.min, info.max)
    return q if q.requires_grad else q.to(dtype)


def as_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An integer (or float-held) quantised tensor as float values."""
    return x if x.dtype == dtype else x.to(dtype)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, dtype: torch.dtype,
             axis: int = 1, block_size: int = 0, saturate_float8: int = 1) -> torch.Tensor:
    """saturate(round(x / scale) + zero_point) in `dtype` (the spec's order: the zero point is added to the
    rounded value), straight-through in backward; into a float8 type, x / scale + zero_point rounded to
    the nearest float8 value (saturating or not as `saturate_float8` says)."""
    q = as_float(x, scale.dtype) / per_axis(scale, x, axis, block_size)
    zero = None if zero_point is None else per_axis(zero_point, x, axis, block_size).to(q.dtype)
    if dtype in FLOAT8:
        q = q if zero is None else q + zero
        y = convert(q.detach(), dtype, saturate_float8)
        return y if not q.requires_grad else q + (y.to(q.dtype) - q.detach())
    q = round_through(q)
    return saturate(q if zero is None else q + zero, dtype)


@register("QuantizeLinear", since=10)
def quantize_linear(x: torch.Tensor, y_scale: torch.Tensor, y_zero_point: torch.Tensor | None = None, *,
                    axis: int = 1, block_size: int = 0, output_dtype: int = 0, saturate: int = 1,
                    precision: int = 0) -> torch.Tensor:
    """ONNX QuantizeLinear (per tensor, per axis from 13, per block from 21)."""
    if precision:
        raise UnsupportedModel("QuantizeLinear with a precision attribute is not supported")
    dtype = integer_type(y_zero_point, output_dtype, float8=True)
    return quantize(x, y_scale, y_zero_point, dtype, axis, block_size, saturate)


@register("DequantizeLinear", since=10)
def dequantize_linear(x: torch.Tensor, x_scale: torch.Tensor, x_zero_point: torch.Tensor | None = None, *,
                      axis: int = 1, block_size: int = 0, output_dtype: int = 0) -> torch.Tensor:
    """(x - zero_point) * scale in the scale's float type."""
    dtype = to_dtype(output_dtype) if output_dtype else x_scale.dtype
    value = as_float(x, dtype)
    if x_zero_point is not None:
        value = value - per_axis(x_zero_point, x, axis, block_size).to(dtype)
    return value * per_axis(x_scale, x, axis, block_size).to(dtype)


@register("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(x: torch.Tensor):
    """(y uint8, y_scale, y_zero_point) for x's range widened to include 0, as onnxruntime computes them;
    the scale and zero point are constants to the gradient."""
    low = torch.clamp(x.detach().min(), max=0.0)
    high = torch.clamp(x.detach().max(), min=0.0)
    scale = torch.where(high == low, torch.ones_like(high), (high - low) / 255.0)
    zero_point = (0.0 - low / scale).clamp(0, 255).round().to(torch.uint8)
    return quantize(x, scale, zero_point, torch.uint8), scale, zero_point


def centred(x: torch.Tensor, zero_point: torch.Tensor | None, axis: int | None = None) -> torch.Tensor:
    """x - zero_point as float32; a 1-D zero point applies along `axis` (by default the last axis)."""
    value = as_float(x)
    if zero_point is None:
        return value
    return value - per_axis(zero_point, x, -1 if axis is None else axis).to(torch.float32)


def integer_result(acc: torch.Tensor) -> torch.Tensor:
    """An int32 accumulator: exact int32 without a gradient, float-held with one."""
    return acc if acc.requires_grad else acc.round().to(torch.int32)


@register("MatMulInteger", since=10)
def matmul_integer(a: torch.Tensor, b: torch.Tensor, a_zero_point: torch.Tensor | None = None,
                   b_zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """(a - a_zero_point) @ (b - b_zero_point) as int32 (per-row a / per-column b zero points)."""
    a_f = centred(a, a_zero_point, axis=-2 if a.dim() > 1 else None)
    b_f = centred(b, b_zero_point)
    return integer_result(a_f @ b_f)


@register("ConvInteger", since=10)
def conv_integer(x: torch.Tensor, w: torch.Tensor, x_zero_point: torch.Tensor | None = None,
                 w_zero_point: torch.Tensor | None = None, *, auto_pad: str = "NOTSET", dilations=None,
                 group: int = 1, kernel_shape=None, pads=None, strides=None) -> torch.Tensor:
    """Conv of (x - x_zero_point) with (w - w_zero_point) as int32 (zero pads read as the zero point)."""
    x_f = centred(x, x_zero_point)
    w_f = centred(w, w_zero_point, axis=0)
    acc = conv(x_f, w_f, None, auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
               pads=pads, strides=strides)
    return integer_result(acc)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zero_point: torch.Tensor | None) -> torch.Tensor:
    """saturate(round(acc * multiplier) + zero_point) in the zero point's type, straight-through."""
    q = round_through(acc * multiplier)
    if zero_point is not None:
        q = q + zero_point.to(device=acc.device, dtype=torch.float32)
    return saturate(q, integer_type(zero_point))


@register("QLinearConv", since=10)
def qlinear_conv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None, *,
                 auto_pad: str = "NOTSET", dilations=None, group: int = 1, kernel_shape=None, pads=None,
                 strides=None) -> torch.Tensor:
    """Quantised Conv: integer accumulation (bias in int32 accumulator units), then requantised to y."""
    x_f = centred(x, x_zero_point)
    w_f = centred(w, w_zero_point, axis=0)
    acc = conv(x_f, w_f, None if bias is None else as_float(bias).to(x_f.device), auto_pad=auto_pad,
               dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads, strides=strides)
    multiplier = x_scale.float() * w_scale.float().to(acc.device) / y_scale.float()
    if multiplier.numel() > 1:
        multiplier = multiplier.reshape([1, -1] + [1] * (acc.dim() - 2))
    return requantize(acc, multiplier.to(acc.device), y_zero_point)


@register("QLinearMatMul", since=10)
def qlinear_matmul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point) -> torch.Tensor:
    """Quantised MatMul: integer accumulation, then requantised to y (per-column b scales allowed)."""
    acc = centred(a, a_zero_point) @ centred(b, b_zero_point)
    multiplier = a_scale.float() * b_scale.float() / y_scale.float()
    return requantize(acc, multiplier.reshape(-1) if multiplier.numel() > 1 else multiplier, y_zero_point)
