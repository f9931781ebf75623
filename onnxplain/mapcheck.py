"""Maps that explain nothing: all zero, constant or non-finite. They are returned with a warning, never silently."""
from __future__ import annotations

import numpy as np


def map_warnings(raw: np.ndarray) -> list[str]:
    """Why the map cannot be read (one sentence each), or [] for a usable map."""
    raw = np.asarray(raw)
    return map_warnings_many(raw[None])[0]


def map_warnings_many(maps: np.ndarray) -> list[list[str]]:
    """`map_warnings` of each map in a (K, ...) stack, checked in one pass over the stack (every class's map of
    `target=all` costs no Python loop of numpy calls)."""
    maps = np.asarray(maps)
    if not len(maps):
        return []
    flat = maps.reshape(len(maps), -1)
    if not flat.shape[1]:
        return [[_ZERO] for _ in range(len(flat))]
    finite = np.isfinite(flat).mean(axis=1)
    nonzero = flat.any(axis=1)
    spread = flat.max(axis=1) - flat.min(axis=1)
    scale = np.maximum(np.abs(flat).max(axis=1), 1.0)
    result = []
    for k in range(len(flat)):
        if finite[k] < 1:
            result.append([f"The map has {1 - finite[k]:.0%} non-finite values (NaN or inf); the model's scores or "
                           "gradients overflowed, so try another method or layer."])
        elif not nonzero[k]:
            result.append([_ZERO])
        elif float(spread[k]) <= 1e-7 * float(scale[k]):
            result.append([f"The map is constant ({float(flat[k, 0]):.4g} everywhere): it says nothing about where; "
                           "try another layer (--layer), target or method."])
        else:
            result.append([])
    return result


_ZERO = ("The map is all zero: the target's score does not respond to this layer or input here (a CAM's weighted "
         "sum may be negative everywhere); try a perturbation method (--method occlusion) or another layer (--layer).")
