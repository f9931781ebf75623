"""Ops that read or rearrange shapes: Shape, Size, Reshape, Flatten, Transpose, (Un)Squeeze, Expand, Tile,
DepthToSpace, SpaceToDepth.

Shape values are int64 CPU tensors, read back as Python ints where an op consumes
them, so shape arithmetic stays exact for any batch size and never syncs a device.
"""
from __future__ import annotations

import math

import torch

from ..registry import register
from .common import axis_list, ints


@register("Shape")
def shape(x: torch.Tensor, *, start: int = 0, end: int | None = None) -> torch.Tensor:
    """x's shape (optionally the dims start..end) as an int64 CPU tensor."""
    return torch.tensor(x.shape[start:end], dtype=torch.int64)


@register("Size")
def size(x: torch.Tensor) -> torch.Tensor:
    """Number of elements of x as an int64 CPU scalar."""
    return torch.tensor(x.numel(), dtype=torch.int64)


@register("Reshape", since=5)
def reshape(x: torch.Tensor, shape: torch.Tensor, *, allowzero: int = 0) -> torch.Tensor:
    """Reshape; a 0 copies the input's dim unless allowzero=1, and one -1 is inferred."""
    dims = ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register("Flatten")
def flatten(x: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """2-D view [prod(shape[:axis]), prod(shape[axis:])]."""
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@register("Transpose")
def transpose(x: torch.Tensor, *, perm=None) -> torch.Tensor:
    """Permute the axes (reversed when perm is absent)."""
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@register("Squeeze")
def squeeze(x: torch.Tensor, axes=None) -> torch.Tensor:
    """Drop size-1 axes (all of them, or those listed: attribute before opset 13, input after)."""
    axes = ints(axes)
    if not axes:
        return x.squeeze()
    return x.squeeze(tuple(axis_list(axes, x.dim())))


@register("Unsqueeze")
def unsqueeze(x: torch.Tensor, axes=None) -> torch.Tensor:
    """Insert size-1 axes at the listed positions of the output (attribute before opset 13, input after)."""
    rank = x.dim() + len(ints(axes))
    for axis in sorted(axis_list(ints(axes), rank)):
        x = x.unsqueeze(axis)
    return x


@register("Expand", since=8)
def expand(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Broadcast x against `shape` (bidirectionally, as numpy)."""
    target = torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape)))
    return x.expand(target)


@register("Tile")
def tile(x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    """Repeat x `repeats[i]` times along each axis."""
    return x.repeat(ints(repeats))


@register("DepthToSpace")
def depth_to_space(x: torch.Tensor, *, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    """Move channel blocks into blocksize x blocksize spatial tiles (DCR: depth-column-row; CRD: as pixel_shuffle)."""
    n, c, h, w = x.shape
    b = blocksize
    if mode == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register("SpaceToDepth")
def space_to_depth(x: torch.Tensor, *, blocksize: int) -> torch.Tensor:
    """Move blocksize x blocksize spatial tiles into channels (inverse of DepthToSpace DCR)."""
    n, c, h, w = x.shape
    b = blocksize
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)
