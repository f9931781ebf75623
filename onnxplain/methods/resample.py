"""Linear resampling as matrices, so a batch of maps is resized by two matrix products (R_y @ M @ R_x^T)."""
from __future__ import annotations

import numpy as np


def half_pixel_resize_matrix(out_size: int, in_size: int, border: str = "clamp") -> np.ndarray:
    """(out_size, in_size) float32 R so that R @ v is v linearly resized with pixel centres aligned
    (torch's align_corners=False, cv2.INTER_LINEAR). Beyond the edge samples, 'clamp' repeats them (cv2) and
    'mirror' reflects about them (skimage's resize with mode='reflect', which RISE's reference code uses)."""
    c = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    last = in_size - 1
    if border == "mirror":
        c = np.abs(c)
        c = np.where(c > last, 2 * last - c, c)
    c = np.clip(c, 0, last)
    i0 = np.floor(c).astype(np.int64)
    frac = c - i0
    i1 = np.minimum(i0 + 1, last)
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (np.arange(out_size), i0), 1 - frac)
    np.add.at(matrix, (np.arange(out_size), i1), frac)
    return matrix.astype(np.float32)


def align_corners_resize_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) float32 R of linear interpolation with the corner samples aligned
    (torch's align_corners=True, UpsamplingBilinear2d; pytorch-grad-cam's Score-CAM upsamples so)."""
    matrix = np.zeros((out_size, in_size))
    if in_size == 1 or out_size == 1:
        matrix[:, 0] = 1.0
        return matrix.astype(np.float32)
    position = np.arange(out_size) * (in_size - 1) / (out_size - 1)
    low = np.minimum(np.floor(position).astype(int), in_size - 2)
    frac = position - low
    rows = np.arange(out_size)
    matrix[rows, low] = 1 - frac
    matrix[rows, low + 1] = frac
    return matrix.astype(np.float32)
