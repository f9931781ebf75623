"""Ablation-CAM (Desai & Ramaswamy, 2020): a channel's weight is the fraction of the target score lost
when that channel is zeroed. Only the model's tail after the layer is re-run, all channels batched."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import register
from .base import MultiTargetMethod, RawMaps
from .perturb import image_score, layer_activations, per_channel_cost, tail_scores_many

EPS = 1e-12  # keeps (y - y_k) / y finite when the target score is exactly zero


@register
class AblationCAM(MultiTargetMethod):
    """w_k = (y - y_k) / y, with y_k the target score when channel k of the layer is zeroed; map relu(sum w_k A_k).

    Zeroing follows the paper (pytorch-grad-cam instead pushes layers with negative values far below
    their minimum). Costs one tail forward per channel that is not already all zero: zeroing those
    changes nothing, so their weight is exactly 0 without a forward.
    """
    name = "ablation-cam"
    engine = "ort"
    summary = "score drop when each channel is zeroed, via the model's tail (a tail forward per non-zero channel)"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        relu: bool = True  # keep only positive evidence (False returns the signed weighted sum)

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return per_channel_cost(params, layer_shape)

    def explain_many(self, context, batch, targets, layer=None) -> RawMaps:
        raw, info, acts = layer_activations(context, batch, layer)
        axis = 1 if info.layout == "NCHW" else raw.ndim - 1  # channel axis in the tensor's own layout
        full = context.forward(batch)
        maps, extras = [], []
        for i, image_targets in enumerate(targets):
            ys = np.array([image_score(t, full, i) for t in image_targets])
            live = np.flatnonzero(np.any(acts[i] != 0, axis=(1, 2)))

            def make(rows: slice) -> np.ndarray:
                k = live[rows]
                variants = np.repeat(raw[i:i + 1], len(k), axis=0)
                index = [np.arange(len(k))] + [slice(None)] * (raw.ndim - 1)
                index[axis] = k
                variants[tuple(index)] = 0
                return variants

            ablated = np.repeat(ys[:, None], len(acts[i]), axis=1)  # (targets, channels)
            ablated[:, live] = tail_scores_many(context, batch, i, layer, image_targets, len(live), make,
                                                desc=f"ablation-cam {i + 1}/{len(targets)}")
            for y, row in zip(ys, ablated):
                denominator = y if abs(y) > EPS else (EPS if y >= 0 else -EPS)
                cam = np.einsum("k,khw->hw", (y - row) / denominator, acts[i].astype(np.float64))
                maps.append(np.maximum(cam, 0) if self.params.relu else cam)
                extras.append({"score": float(y), "forwards": len(live)})
        return RawMaps(np.stack(maps), extras)
