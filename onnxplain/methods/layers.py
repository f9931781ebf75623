"""Helpers shared by layer-based methods: activations in (N, C, h, w) whatever the tensor's layout."""
from __future__ import annotations

import numpy as np

from ..model import TensorInfo


def channels_first(value: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A spatial tensor as (N, C, h, w): NHWC transposed, token tensors reshaped to their grid (class token dropped)."""
    if info.layout == "NCHW":
        return value
    if info.layout == "NHWC":
        return value.transpose(0, 3, 1, 2)
    if info.layout == "tokens":
        h, w = info.grid
        tokens = value[:, -h * w:, :]
        return tokens.transpose(0, 2, 1).reshape(len(value), -1, h, w)
    raise ValueError(f"tensor {info.name} is not spatial")


def to_layout(value: np.ndarray, info: TensorInfo, like: np.ndarray | None = None) -> np.ndarray:
    """Inverse of channels_first: (N, C, h, w) back to the tensor's own layout (class token from `like`)."""
    if info.layout == "NCHW":
        return value
    if info.layout == "NHWC":
        return value.transpose(0, 2, 3, 1)
    n, c, h, w = value.shape
    tokens = value.reshape(n, c, h * w).transpose(0, 2, 1)
    if like is not None and like.shape[1] > h * w:
        extra = like[:, : like.shape[1] - h * w, :]
        extra = np.broadcast_to(extra, (n,) + extra.shape[1:])
        tokens = np.concatenate([extra, tokens], axis=1)
    return tokens
