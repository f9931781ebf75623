"""Tensor layouts: layer tensors (NCHW, NHWC, transformer tokens) and model inputs (NCHW, NHWC) to and from
channels-first, in numpy (`*_np`) and torch (`*_torch`) under distinct names.

Layer tensors are described by their TensorInfo (`info.layout`, `info.grid`); model inputs by the input's
layout string ("NCHW" or "NHWC").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import MethodError

if TYPE_CHECKING:
    import torch

    from ..model import TensorInfo


# ---- layer tensors (by TensorInfo) ------------------------------------------------------------------
def channels_first_np(value: np.ndarray, info: "TensorInfo") -> np.ndarray:
    """A spatial layer tensor as (N, C, h, w): NHWC transposed, token tensors reshaped to their grid (class token
    dropped); a view where the layout allows."""
    return _channels_first(value, info, lambda v, axes: v.transpose(axes))


def channels_first_torch(value: "torch.Tensor", info: "TensorInfo") -> "torch.Tensor":
    """`channels_first_np` for a torch tensor (gradients flow through)."""
    return _channels_first(value, info, lambda v, axes: v.permute(axes))


def _channels_first(value, info: "TensorInfo", permute):
    if info.layout == "NCHW":
        return value
    if info.layout == "NHWC":
        return permute(value, (0, 3, 1, 2))
    if info.layout == "tokens":
        h, w = info.grid
        tokens = value[:, value.shape[1] - h * w:, :]
        return permute(tokens, (0, 2, 1)).reshape(len(value), -1, h, w)
    raise _not_spatial(info)


def from_channels_first_np(value: np.ndarray, info: "TensorInfo", like: np.ndarray | None = None) -> np.ndarray:
    """Inverse of `channels_first_np`: (N, C, h, w) back to the tensor's own layout; a token tensor's class token
    is taken from `like` (its original value)."""
    if info.layout == "NCHW":
        return value
    if info.layout == "NHWC":
        return value.transpose(0, 2, 3, 1)
    if info.layout != "tokens":
        raise _not_spatial(info)
    n, c, h, w = value.shape
    tokens = value.reshape(n, c, h * w).transpose(0, 2, 1)
    if like is not None and like.shape[1] > h * w:
        extra = like[:, : like.shape[1] - h * w, :]
        extra = np.broadcast_to(extra, (n,) + extra.shape[1:])
        tokens = np.concatenate([extra, tokens], axis=1)
    return tokens


def _not_spatial(info: "TensorInfo") -> MethodError:
    return MethodError(f"Tensor '{info.name}' is not a spatial map; pick one from `onnxplain inspect --spatial`.")


# ---- model inputs (by layout string) ------------------------------------------------------------------
def channel_axis(layout: str) -> int:
    """The channel axis of an input batch in this layout (NCHW: 1, NHWC: 3)."""
    return 1 if layout == "NCHW" else 3


def spatial_axes(layout: str) -> tuple[int, int]:
    """The (H, W) axes of one input image without its batch axis (NCHW: (1, 2), NHWC: (0, 1))."""
    return (1, 2) if layout == "NCHW" else (0, 1)


def chw_shape(x: np.ndarray, layout: str) -> tuple[int, int, int]:
    """(C, H, W) of one input image in the given layout."""
    return tuple(x.shape) if layout == "NCHW" else (x.shape[2], x.shape[0], x.shape[1])


def input_to_nchw_np(x: np.ndarray, layout: str) -> np.ndarray:
    """An input batch (NCHW or NHWC) as NCHW (a view)."""
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def nchw_to_input_np(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW batch in the model's input layout (a view)."""
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def input_to_nchw_torch(x: "torch.Tensor", layout: str) -> "torch.Tensor":
    """`input_to_nchw_np` for a torch batch."""
    return x if layout == "NCHW" else x.permute(0, 3, 1, 2)


def nchw_to_input_torch(x: "torch.Tensor", layout: str) -> "torch.Tensor":
    """`nchw_to_input_np` for a torch batch."""
    return x if layout == "NCHW" else x.permute(0, 2, 3, 1)


def image_to_hwc_np(x: np.ndarray, layout: str) -> np.ndarray:
    """One input image (no batch axis) as (H, W, C), the layout cv2 filters take (a view)."""
    return x.transpose(1, 2, 0) if layout == "NCHW" else x


def hwc_to_image_np(x: np.ndarray, layout: str) -> np.ndarray:
    """Inverse of `image_to_hwc_np`."""
    return x.transpose(2, 0, 1) if layout == "NCHW" else x
