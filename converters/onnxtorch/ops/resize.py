"""Resize (opsets 10-19+) and Upsample (7-9), done axis by axis with index_select so that every
coordinate_transformation_mode, nearest_mode and interpolation mode follows the ONNX formulas exactly.

Source coordinates are computed in float32, as onnxruntime does, so nearest rounding
ties fall the same way.
"""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedModel
from ..registry import register
from .antialias import antialias_axis
from .common import axis_list, floats, ints


def source_coordinates(out: int, size: int, scale: float, mode: str, roi: tuple[float, float]) -> torch.Tensor:
    """Position in the input of each output index along one axis (float32)."""
    x = torch.arange(out, dtype=torch.float32)
    scale_t = torch.tensor(scale, dtype=torch.float32)
    if mode == "half_pixel":
        return (x + 0.5) / scale_t - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out / (scale * size)
        offset = size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale_t - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale_t - 0.5 if out > 1 else torch.zeros(out)
    if mode == "align_corners":
        return x * ((size - 1) / (out - 1)) if out > 1 else torch.zeros(out)
    if mode == "asymmetric":
        return x / scale_t
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale_t
    if mode == "tf_crop_and_resize":
        start, end = roi
        if out > 1:
            return start * (size - 1) + x * ((end - start) * (size - 1) / (out - 1))
        return torch.full((out,), 0.5 * (start + end) * (size - 1))
    raise UnsupportedModel(f"Resize coordinate_transformation_mode '{mode}' is not supported")


def nearest_index(coord: torch.Tensor, mode: str, scale: float) -> torch.Tensor:
    """Nearest input index for each source coordinate under an ONNX nearest_mode."""
    if mode == "round_prefer_floor":
        idx = torch.where(coord == torch.floor(coord) + 0.5, torch.floor(coord), torch.round(coord))
    elif mode == "round_prefer_ceil":
        idx = torch.floor(coord + 0.5)
    elif mode == "floor":
        idx = torch.floor(coord)
    elif mode == "ceil":
        idx = torch.ceil(coord)
    elif mode == "simple":  # Upsample and Resize-10
        idx = torch.ceil(coord) if scale < 1 else torch.trunc(coord)
    else:
        raise UnsupportedModel(f"Resize nearest_mode '{mode}' is not supported")
    return idx.to(torch.int64)


def cubic_weights(t: torch.Tensor, a: float) -> list[torch.Tensor]:
    """Keys cubic convolution weights of the 4 neighbours floor-1 .. floor+2 at fraction t."""
    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def along(w: torch.Tensor, axis: int, rank: int, like: torch.Tensor) -> torch.Tensor:
    """A 1-D weight shaped to broadcast along `axis` of a rank-`rank` tensor like `like`."""
    shape = [1] * rank
    shape[axis] = -1
    return w.reshape(shape).to(device=like.device, dtype=like.dtype)


def resize_axis(x: torch.Tensor, axis: int, out: int, scale: float, roi: tuple[float, float], mode: str,
                transform: str, nearest_mode: str, cubic_coeff_a: float, exclude_outside: int,
                extrapolation_value: float, antialias: int = 0) -> torch.Tensor:
    """x resized along one axis."""
    size = x.shape[axis]
    coord = source_coordinates(out, size, scale, transform, roi)
    if antialias and scale < 1 and mode != "nearest":
        return antialias_axis(x, axis, coord, scale, mode, cubic_coeff_a, exclude_outside, transform)
    if mode == "nearest":
        idx = nearest_index(coord, nearest_mode, scale).clamp(0, size - 1)
        y = x.index_select(axis, idx.to(x.device))
    elif mode in ("linear", "bilinear", "trilinear"):
        clamped = coord.clamp(0, size - 1)
        low = torch.floor(clamped).to(torch.int64)
        high = (low + 1).clamp(max=size - 1)
        frac = along(clamped - low, axis, x.dim(), x)
        y = x.index_select(axis, low.to(x.device)) * (1 - frac) + x.index_select(axis, high.to(x.device)) * frac
    elif mode == "cubic":
        base = torch.floor(coord)
        weights = cubic_weights(coord - base, cubic_coeff_a)
        neighbours = [base.to(torch.int64) + k for k in (-1, 0, 1, 2)]
        if exclude_outside:
            weights = [w * ((n >= 0) & (n < size)) for w, n in zip(weights, neighbours)]
            total = sum(weights)
            weights = [w / total for w in weights]
        y = sum(x.index_select(axis, n.clamp(0, size - 1).to(x.device)) * along(w, axis, x.dim(), x)
                for w, n in zip(weights, neighbours))
    else:
        raise UnsupportedModel(f"Resize mode '{mode}' is not supported")
    if transform == "tf_crop_and_resize":
        outside = along(((coord < 0) | (coord > size - 1)).to(torch.float32), axis, x.dim(), x).bool()
        y = torch.where(outside, torch.tensor(extrapolation_value, dtype=y.dtype, device=y.device), y)
    return y


def resize_core(x: torch.Tensor, scales: list[float] | None, sizes: list[int] | None, axes: list[int],
                roi: list[float] | None, *, mode: str, transform: str, nearest_mode: str,
                cubic_coeff_a: float = -0.75, exclude_outside: int = 0, extrapolation_value: float = 0.0,
                keep_aspect_ratio_policy: str = "stretch", antialias: int = 0) -> torch.Tensor:
    """Resize the listed axes to scales (output floor(in * scale)) or sizes (scale = out / in)."""
    inputs = [x.shape[a] for a in axes]
    if sizes is not None:
        if keep_aspect_ratio_policy != "stretch":
            ratios = [o / i for o, i in zip(sizes, inputs)]
            common = min(ratios) if keep_aspect_ratio_policy == "not_larger" else max(ratios)
            sizes = [int(common * i + 0.5) for i in inputs]
            scales = [common] * len(axes)
        else:
            scales = [o / i for o, i in zip(sizes, inputs)]
    else:
        sizes = [int(math.floor(i * s)) for i, s in zip(inputs, scales)]
    n = len(axes)
    for k, (axis, out, scale) in enumerate(zip(axes, sizes, scales)):
        if out == x.shape[axis] and scale == 1.0 and transform != "tf_crop_and_resize":
            continue
        axis_roi = (roi[k], roi[k + n]) if roi else (0.0, 1.0)
        x = resize_axis(x, axis, out, scale, axis_roi, mode, transform, nearest_mode, cubic_coeff_a,
                        exclude_outside, extrapolation_value, antialias)
    return x


def present(values: list | None) -> list | None:
    """None for an absent or empty optional input."""
    return values if values else None


@register("Resize", since=11)
def resize(x: torch.Tensor, roi=None, scales=None, sizes=None, *, antialias: int = 0, axes=None,
           coordinate_transformation_mode: str = "half_pixel", cubic_coeff_a: float = -0.75,
           exclude_outside: int = 0, extrapolation_value: float = 0.0, keep_aspect_ratio_policy: str = "stretch",
           mode: str = "nearest", nearest_mode: str = "round_prefer_floor") -> torch.Tensor:
    """ONNX Resize from opset 11: roi/scales/sizes inputs, optional axes (opset 18)."""
    axes = axis_list(axes, x.dim()) if axes is not None else list(range(x.dim()))
    roi_values = present(floats(roi))
    if roi_values and len(roi_values) == 2 * x.dim() and len(axes) < x.dim():
        roi_values = [roi_values[a] for a in axes] + [roi_values[a + x.dim()] for a in axes]
    return resize_core(x, present(floats(scales)), present(ints(sizes)), axes, roi_values, mode=mode,
                       transform=coordinate_transformation_mode, nearest_mode=nearest_mode,
                       cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                       extrapolation_value=extrapolation_value, keep_aspect_ratio_policy=keep_aspect_ratio_policy,
                       antialias=antialias)


@register("Resize", since=10, until=10)
def resize_10(x: torch.Tensor, scales: torch.Tensor, *, mode: str = "nearest") -> torch.Tensor:
    """ONNX Resize-10: scales input, asymmetric coordinates (as Upsample)."""
    return resize_core(x, floats(scales), None, list(range(x.dim())), None, mode=mode,
                       transform="asymmetric", nearest_mode="simple")


@register("Upsample", since=7, until=9)
def upsample(x: torch.Tensor, scales=None, *, mode: str = "nearest") -> torch.Tensor:
    """ONNX Upsample (scales attribute in opset 7, input from 9): asymmetric coordinates."""
    return resize_core(x, floats(scales), None, list(range(x.dim())), None, mode=mode,
                       transform="asymmetric", nearest_mode="simple")
