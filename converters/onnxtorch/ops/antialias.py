"""Resize with antialias when downsampling: each output is a weighted sum over a filter window stretched by
1/scale (linear: triangle, cubic: Keys), renormalised, with onnxruntime's
handling of the taps beyond the input."""
from __future__ import annotations

import math

import torch

from ..errors import UnsupportedModel


def filter_weights(t: torch.Tensor, mode: str, cubic_coeff_a: float) -> torch.Tensor:
    """The interpolation kernel at distances t (in input pixels scaled by the downsampling factor)."""
    t = t.abs()
    if mode in ("linear", "bilinear", "trilinear"):
        return (1 - t).clamp(min=0)
    a = cubic_coeff_a
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))

def antialias_matrix(coord: torch.Tensor, size: int, scale: float, mode: str, cubic_coeff_a: float,
                     exclude_outside: int) -> torch.Tensor:
    """[out, size] weights: row i spreads output i over the input pixels its stretched filter covers; taps
    beyond the input read the edge pixel unless exclude_outside drops them (weights renormalised)."""
    support = (1.0 if mode != "cubic" else 2.0) / scale
    centre = coord.to(torch.float32) + 0.5
    reach = int(math.ceil(support)) + 2
    taps = torch.arange(-reach, size + reach, dtype=torch.float32)
    low = (centre - support + 0.5).floor()
    high = (centre + support + 0.5).floor()
    inside = (taps[None, :] >= low[:, None]) & (taps[None, :] < high[:, None])
    if exclude_outside:
        inside &= (taps[None, :] >= 0) & (taps[None, :] < size)
    weights = filter_weights((taps[None, :] - centre[:, None] + 0.5) * scale, mode, cubic_coeff_a) * inside
    total = weights.sum(1, keepdim=True)
    weights = weights / torch.where(total == 0, torch.ones_like(total), total)
    columns = taps.to(torch.int64).clamp(0, size - 1).expand_as(weights)
    return torch.zeros((weights.shape[0], size)).scatter_add(1, columns, weights)


def antialias_axis(x: torch.Tensor, axis: int, coord: torch.Tensor, scale: float, mode: str,
                   cubic_coeff_a: float, exclude_outside: int, transform: str) -> torch.Tensor:
    """x downsampled along `axis` with the antialiasing filter."""
    if mode == "nearest":
        raise UnsupportedModel("antialias applies to linear and cubic Resize only")
    if transform == "tf_crop_and_resize":
        raise UnsupportedModel("Resize with antialias and tf_crop_and_resize is not supported")
    matrix = antialias_matrix(coord, x.shape[axis], scale, mode, cubic_coeff_a, exclude_outside).to(device=x.device, dtype=x.dtype)
    moved = x.movedim(axis, -1)
    return (moved @ matrix.T).movedim(-1, axis)

