"""The one baseline builder: what removed, occluded or masked pixels become, for every method and metric."""
from __future__ import annotations

from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..errors import MethodError
from ..images import normalise
from .layout import chw_shape, hwc_to_image_np, image_to_hwc_np, spatial_axes

if TYPE_CHECKING:
    from ..images import Preprocess

BASELINES = ("zero", "constant", "mean", "black", "blur", "uniform")
BORDERS = {"reflect": cv2.BORDER_REFLECT, "reflect101": cv2.BORDER_REFLECT_101}


def baseline(x: np.ndarray, layout: str, kind: str, *, value: float = 0.0, sigma: float = 5.0, kernel: int = 0,
             border: str = "reflect", preprocess: "Preprocess | None" = None, seed: int = 0) -> np.ndarray:
    """The baseline of one model input `x` (model layout, no batch axis): an array of x's shape and dtype.

    zero: 0 in model space (the dataset's mean colour under mean/std presets, black under raw ones);
    constant: `value` in model space; mean: the image's mean colour; black: a black image through
    `preprocess`; blur: the image under a Gaussian of `sigma` input pixels (a `kernel` x `kernel` window,
    0 = sized from sigma; `border` reflect or reflect101); uniform: uniform noise over the valid input
    range of `preprocess`, from a generator seeded with `seed`.
    """
    if kind == "zero":
        return np.zeros_like(x)
    if kind == "constant":
        return np.full_like(x, value)
    if kind == "mean":
        colour = x.mean(axis=spatial_axes(layout), keepdims=True, dtype=np.float64).astype(x.dtype)
        return np.broadcast_to(colour, x.shape).copy()
    if kind == "blur":
        hwc = np.ascontiguousarray(image_to_hwc_np(x, layout), np.float32)
        blurred = cv2.GaussianBlur(hwc, (kernel, kernel), sigma, borderType=BORDERS[border]).reshape(hwc.shape)
        return np.ascontiguousarray(hwc_to_image_np(blurred, layout), x.dtype)
    if kind in ("black", "uniform"):
        if preprocess is None:
            raise ValueError(f"baseline '{kind}' needs the preprocessing")
        c, h, w = chw_shape(x, layout)
        low = _model_value(0, c, preprocess)
        if kind == "black":
            chw = np.broadcast_to(low[:, None, None], (c, h, w))
        else:
            import torch  # the uniform baseline keeps torch's seeded stream (integrated gradients draws it so)
            u = torch.rand((c, h, w), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
            chw = low[:, None, None] + u.numpy() * (_model_value(255, c, preprocess) - low)[:, None, None]
        return np.ascontiguousarray(chw if layout == "NCHW" else chw.transpose(1, 2, 0), x.dtype)
    raise MethodError(f"Unknown baseline '{kind}'; use one of {', '.join(BASELINES)}.")


def _model_value(pixel: int, channels: int, preprocess: "Preprocess") -> np.ndarray:
    """(C,) model-space value of a uniform image of `pixel` in every channel."""
    return normalise(np.full((1, 1, channels), pixel, np.uint8), preprocess).reshape(channels)
