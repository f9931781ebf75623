"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of a layer's activations."""
from __future__ import annotations

import numpy as np

from . import register
from .base import Method, RawMaps
from .layers import channels_first


@register
class EigenCAM(Method):
    """Projection of each position's channel vector on the first right singular vector; class-agnostic."""
    name = "eigen-cam"
    engine = "ort"
    summary = "first principal component of the layer's activations (class-agnostic)"
    uses_layer = True

    def explain(self, explainer, batch, targets, layer=None) -> RawMaps:
        info = explainer.model.spatial_info(layer)
        acts = channels_first(explainer.forward(batch, [layer])[layer], info)  # (N, C, h, w)
        maps = [first_component(a) for a in acts]
        return RawMaps(np.stack(maps))


def first_component(activation: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (h, w): positions projected on the top singular vector, sign fixed so the map is mostly positive."""
    c, h, w = activation.shape
    flat = activation.reshape(c, h * w).T  # positions x channels
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    projection = flat @ vt[0]
    if projection.sum() < 0:
        projection = -projection
    return np.maximum(projection, 0).reshape(h, w)
