"""Maps that explain nothing: all zero, constant or non-finite. They are returned with a warning, never silently."""
from __future__ import annotations

import numpy as np


def map_warnings(raw: np.ndarray) -> list[str]:
    """Why the map cannot be read (one sentence each), or [] for a usable map."""
    raw = np.asarray(raw)
    finite = np.isfinite(raw)
    if not finite.all():
        share = 1 - finite.mean()
        return [f"The map has {share:.0%} non-finite values (NaN or inf); the model's scores or gradients "
                "overflowed, so try another method or layer."]
    if not raw.any():
        return ["The map is all zero: the target's score does not respond to this layer or input here (a CAM's "
                "weighted sum may be negative everywhere); try a perturbation method (--method occlusion) or "
                "another layer (--layer)."]
    if float(raw.max() - raw.min()) <= 1e-7 * max(1.0, float(np.abs(raw).max())):
        return [f"The map is constant ({float(raw.flat[0]):.4g} everywhere): it says nothing about where; "
                "try another layer (--layer), target or method."]
    return []
