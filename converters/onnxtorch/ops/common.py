"""Small helpers shared by the op functions: shape-like values as Python ints, dtypes."""
from __future__ import annotations

from typing import Sequence

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
