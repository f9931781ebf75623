"""Small helpers shared by the op functions: shape-like values as Python ints, dtypes, the int64 path for
uint16/32/64 values."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from onnx import TensorProto

from ..errors import UnsupportedModel

ONNX_TO_TORCH_DTYPE = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16, TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.UINT8: torch.uint8, TensorProto.INT8: torch.int8,
    TensorProto.UINT16: torch.uint16, TensorProto.INT16: torch.int16,
    TensorProto.UINT32: torch.uint32, TensorProto.INT32: torch.int32,
    TensorProto.UINT64: torch.uint64, TensorProto.INT64: torch.int64,
    TensorProto.BOOL: torch.bool,
    TensorProto.COMPLEX64: torch.complex64, TensorProto.COMPLEX128: torch.complex128,
    TensorProto.FLOAT8E4M3FN: torch.float8_e4m3fn, TensorProto.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    TensorProto.FLOAT8E5M2: torch.float8_e5m2, TensorProto.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
}


def ints(value: torch.Tensor | Sequence[int] | int | None) -> list[int] | None:
    """A shape-like value (axes, pads, sizes...) from an attribute or an input tensor as Python ints."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def floats(value: torch.Tensor | Sequence[float] | None) -> list[float] | None:
    """A list of Python floats from an attribute or an input tensor (scales, roi)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.reshape(-1).tolist()]
    return [float(v) for v in value]


def scalar(value: torch.Tensor | float | int | None, default: float | int | None = None):
    """One Python number from a 0-d/1-element tensor or a number (None gives `default`)."""
    if value is None:
        return default
    if isinstance(value, torch.Tensor):
        if value.numel() == 0:
            return default
        return value.reshape(-1)[0].item()
    return value


def axis_list(axes: list[int] | None, rank: int) -> list[int]:
    """Axes normalised to 0..rank-1 (negative axes count from the end); None means every axis."""
    if axes is None:
        return list(range(rank))
    return [a + rank if a < 0 else a for a in axes]


def same_device(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a and b on one device: a CPU value computed from shapes (Shape, Range, ConstantOfShape) meeting a
    tensor on the module's device moves there."""
    if a.device == b.device:
        return a, b
    return (a.to(b.device), b) if a.device.type == "cpu" else (a, b.to(a.device))


def to_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX TensorProto data type."""
    try:
        return ONNX_TO_TORCH_DTYPE[onnx_type]
    except KeyError:
        raise UnsupportedModel(f"ONNX data type {TensorProto.DataType.Name(onnx_type)} has no torch equivalent")


UNSIGNED_WIDE = (torch.uint16, torch.uint32, torch.uint64)


def as_int64(x, op: str):
    """A uint16/32/64 tensor as int64 (other values unchanged); uint64 values must fit, checked here."""
    if not isinstance(x, torch.Tensor) or x.dtype not in UNSIGNED_WIDE:
        return x
    if x.dtype != torch.uint64:
        return x.to(torch.int64)
    signed = x.view(torch.int64)
    if bool((signed < 0).any()):
        raise UnsupportedModel(f"{op} reads uint64 values of 2**63 or more, which the converter cannot compute "
                               "with (it computes unsigned values in int64)")
    return signed


def back_to(x, dtype: torch.dtype):
    """An int64 result in the unsigned type its inputs had (wrapping as that type does)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        return x
    return x.view(torch.uint64) if dtype == torch.uint64 else x.to(dtype)


def unsigned_in_int64(keeps_type: tuple[int, ...] = (0,)) -> Callable[[Callable], Callable]:
    """Decorator: attach to an op function `fn.unsigned`, a version that computes uint16/32/64 inputs in int64
    (torch has almost no kernels for them) and gives the outputs listed in `keeps_type` back in the first
    input's unsigned type. Sums, differences and products wrap as the unsigned type does (int64 arithmetic
    agrees modulo 2**64); the module uses it only for models holding such values."""
    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def unsigned(*args, **kwargs):
            if not any(isinstance(a, torch.Tensor) and a.dtype in UNSIGNED_WIDE for a in args):
                return fn(*args, **kwargs)
            first = args[0].dtype if isinstance(args[0], torch.Tensor) else None
            result = fn(*[as_int64(a, fn.__name__) for a in args], **kwargs)
            if first not in UNSIGNED_WIDE:
                return result
            if isinstance(result, tuple):
                return tuple(back_to(r, first) if i in keeps_type else r for i, r in enumerate(result))
            return back_to(result, first) if 0 in keeps_type else result
        fn.unsigned = unsigned
        return fn
    return decorate
