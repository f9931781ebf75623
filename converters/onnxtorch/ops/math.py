"""Elementwise arithmetic, comparisons and logic, and the matrix products (Gemm, MatMul, Einsum)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ..registry import register
from .common import same_device, unsigned_in_int64


@register("Add")
@unsigned_in_int64()
def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b with numpy broadcasting."""
    a, b = same_device(a, b)
    return a + b


@register("Sub")
@unsigned_in_int64()
def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a - b."""
    a, b = same_device(a, b)
    return a - b


@register("Mul")
@unsigned_in_int64()
def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a * b."""
    a, b = same_device(a, b)
    return a * b


@register("Div")
@unsigned_in_int64()
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b; integer division truncates toward zero, as onnxruntime does."""
    a, b = same_device(a, b)
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


@register("Mod", since=10)
@unsigned_in_int64()
def mod(a: torch.Tensor, b: torch.Tensor, *, fmod: int = 0) -> torch.Tensor:
    """Remainder with the divisor's sign (fmod=0) or the dividend's (fmod=1, C fmod)."""
    a, b = same_device(a, b)
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


@register("Pow")
@unsigned_in_int64()
def pow_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ** b, in a's dtype (the exponent may have another type since opset 12)."""
    a, b = same_device(a, b)
    y = torch.pow(a, b)
    return y if y.dtype == a.dtype else y.to(a.dtype)


@register("Sqrt")
def sqrt(x: torch.Tensor) -> torch.Tensor:
    """Square root."""
    return torch.sqrt(x)


@register("Exp")
def exp(x: torch.Tensor) -> torch.Tensor:
    """e ** x."""
    return torch.exp(x)


@register("Log")
def log(x: torch.Tensor) -> torch.Tensor:
    """Natural logarithm."""
    return torch.log(x)


@register("Abs")
def abs_(x: torch.Tensor) -> torch.Tensor:
    """|x|."""
    return torch.abs(x)


@register("Neg")
def neg(x: torch.Tensor) -> torch.Tensor:
    """-x."""
    return torch.neg(x)


@register("Reciprocal")
def reciprocal(x: torch.Tensor) -> torch.Tensor:
    """1 / x."""
    return torch.reciprocal(x)


@register("Floor")
def floor(x: torch.Tensor) -> torch.Tensor:
    """Round down."""
    return torch.floor(x)


@register("Ceil")
def ceil(x: torch.Tensor) -> torch.Tensor:
    """Round up."""
    return torch.ceil(x)


@register("Round", since=11)
def round_(x: torch.Tensor) -> torch.Tensor:
    """Round half to even."""
    return torch.round(x)


@register("Sign", since=9)
def sign(x: torch.Tensor) -> torch.Tensor:
    """-1, 0 or 1."""
    return torch.sign(x)


@register("Sin", since=7)
def sin(x: torch.Tensor) -> torch.Tensor:
    """Sine."""
    return torch.sin(x)


@register("Cos", since=7)
def cos(x: torch.Tensor) -> torch.Tensor:
    """Cosine."""
    return torch.cos(x)


@register("IsNaN", since=9)
def is_nan(x: torch.Tensor) -> torch.Tensor:
    """True where x is NaN."""
    return torch.isnan(x)


@register("IsInf", since=10)
def is_inf(x: torch.Tensor, *, detect_negative: int = 1, detect_positive: int = 1) -> torch.Tensor:
    """True where x is an infinity of a selected sign."""
    return (torch.isposinf(x) & bool(detect_positive)) | (torch.isneginf(x) & bool(detect_negative))


def fold(fn, tensors) -> torch.Tensor:
    """Reduce a variadic op's inputs pairwise with broadcasting."""
    return functools.reduce(lambda a, b: fn(*same_device(a, b)), tensors)


@register("Sum")
@unsigned_in_int64()
def sum_(*tensors: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of all inputs."""
    return fold(torch.add, tensors)


@register("Mean")
def mean(*tensors: torch.Tensor) -> torch.Tensor:
    """Elementwise mean of all inputs."""
    return fold(torch.add, tensors) / len(tensors)


@register("Max")
@unsigned_in_int64()
def max_(*tensors: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of all inputs."""
    return fold(torch.maximum, tensors)


@register("Min")
@unsigned_in_int64()
def min_(*tensors: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum of all inputs."""
    return fold(torch.minimum, tensors)


@register("Equal")
@unsigned_in_int64(keeps_type=())
def equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a == b."""
    return torch.eq(*same_device(a, b))


@register("Less")
@unsigned_in_int64(keeps_type=())
def less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a < b."""
    return torch.lt(*same_device(a, b))


@register("LessOrEqual", since=12)
@unsigned_in_int64(keeps_type=())
def less_or_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a <= b."""
    return torch.le(*same_device(a, b))


@register("Greater")
@unsigned_in_int64(keeps_type=())
def greater(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a > b."""
    return torch.gt(*same_device(a, b))


@register("GreaterOrEqual", since=12)
@unsigned_in_int64(keeps_type=())
def greater_or_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a >= b."""
    return torch.ge(*same_device(a, b))


@register("Not")
def not_(x: torch.Tensor) -> torch.Tensor:
    """Logical not."""
    return torch.logical_not(x)


@register("And")
def and_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logical and."""
    return torch.logical_and(*same_device(a, b))


@register("Or")
def or_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logical or."""
    return torch.logical_or(*same_device(a, b))


@register("Xor")
def xor(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Logical exclusive or."""
    return torch.logical_xor(*same_device(a, b))


@register("Where", since=9)
def where(condition: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x where condition else y (a CPU condition, e.g. a folded constant, follows x's device)."""
    x, y = same_device(x, y)
    return torch.where(condition.to(x.device), x, y)


@register("Gemm")
def gemm(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None, *, alpha: float = 1.0,
         beta: float = 1.0, transA: int = 0, transB: int = 0) -> torch.Tensor:
    """alpha * A' @ B' + beta * C; the usual Linear form (transB=1, alpha=beta=1) goes to F.linear."""
    if not transA and transB and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() <= 1):
        return F.linear(a, b, c)
    y = (a.t() if transA else a) @ (b.t() if transB else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return y


@register("MatMul")
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """numpy matmul."""
    return torch.matmul(a, b)


@register("Einsum", since=12)
def einsum(*tensors: torch.Tensor, equation: str) -> torch.Tensor:
    """Einstein summation; ONNX and torch share the equation syntax."""
    return torch.einsum(equation.replace(" ", ""), *tensors)
