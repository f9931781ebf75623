"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of a layer's activations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import register
from .base import Method, RawMaps
from .perturb import layer_activations


@register
class EigenCAM(Method):
    """Projection of each position's channel vector on the first principal direction; class-agnostic.

    Activations are centred over positions before the SVD, as pytorch-grad-cam does; the SVD's arbitrary
    sign is fixed so the map rises where the layer's total activation rises.
    """
    name = "eigen-cam"
    engine = "ort"
    summary = "first principal component of the layer's activations (class-agnostic)"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        relu: bool = True  # keep the positive side only, as pytorch-grad-cam does (False: signed projection)

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        _, _, acts = layer_activations(context, batch, layer)  # (N, C, h, w)
        maps = first_component(acts)
        return RawMaps(np.maximum(maps, 0) if self.params.relu else maps)


def first_component(acts: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N, h, w): centred positions projected on the top right singular vector, per image.

    The sign makes the projection correlate positively with each position's summed activation, so a
    post-ReLU layer's strongly active region comes out positive whatever sign the SVD returned.
    """
    n, c, h, w = acts.shape
    flat = acts.reshape(n, c, h * w).transpose(0, 2, 1).astype(np.float64)  # (N, positions, channels)
    flat = np.nan_to_num(flat - flat.mean(axis=1, keepdims=True))
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    projection = np.einsum("npc,nc->np", flat, vt[:, 0])
    sign = np.sign(np.einsum("np,np->n", projection, flat.sum(axis=2)))
    projection *= np.where(sign == 0, 1.0, sign)[:, None]
    return projection.reshape(n, h, w)
