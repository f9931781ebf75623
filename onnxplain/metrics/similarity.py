"""How alike two maps are: Spearman rank correlation (scipy) and SSIM of their magnitudes scaled to [0, 1].

Maps are compared by magnitude (|map|), so a sign flip does not count as a change, as in Adebayo et al.'s
absolute-value variant.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy import stats


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (scipy.stats.spearmanr, ties by average rank); two constant maps
    agree (1), one constant map does not (0), where scipy would answer nan."""
    a, b = np.nan_to_num(np.asarray(a, np.float64)).ravel(), np.nan_to_num(np.asarray(b, np.float64)).ravel()
    flat_a, flat_b = bool(np.all(a == a[0])) if a.size else True, bool(np.all(b == b[0])) if b.size else True
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0
    return float(np.clip(stats.spearmanr(a, b).statistic, -1.0, 1.0))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al., 2004) with an 11-tap Gaussian window, borders cropped.

    Matches skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)
    without depending on scikit-image.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    radius = int(3.5 * sigma + 0.5)
    size = 2 * radius + 1
    if min(a.shape) < size:  # too small for the window: upsample both (maps are smooth)
        scale = size / min(a.shape)
        shape = (int(np.ceil(a.shape[1] * scale)), int(np.ceil(a.shape[0] * scale)))
        a, b = (cv2.resize(m, shape, interpolation=cv2.INTER_LINEAR) for m in (a, b))

    def blur(m: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(m, (size, size), sigma, borderType=cv2.BORDER_REFLECT)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma * ma, blur(b * b) - mb * mb, blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return float(s[radius:-radius, radius:-radius].mean())


def unit(heatmap: np.ndarray) -> np.ndarray:
    """|map| scaled to [0, 1] (a constant map becomes 0): the form maps are compared in."""
    m = np.abs(np.nan_to_num(np.asarray(heatmap, np.float64)))
    peak = m.max() if m.size else 0.0
    low = m.min() if m.size else 0.0
    return (m - low) / (peak - low) if peak > low else np.zeros_like(m)


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Spearman, SSIM) of two maps' magnitudes; `b` is resized to `a` when their sizes differ."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
    ua, ub = unit(a), unit(b)
    return spearman(ua, ub), ssim(ua, ub)
