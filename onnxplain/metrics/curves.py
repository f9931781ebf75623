"""Deletion and insertion curves (Petsiuk et al., 2018): remove (or add back) pixels in the order a map ranks
them and follow the target's score; all steps of one image run through the model as one batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from ..errors import UserError
from ..images import normalise as normalise_pixels
from ..targets import ClassTarget

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import Prepared
    from ..methods.base import Attribution

BASELINES = ("zero", "black", "blur")
STEPS = 32


@dataclass(frozen=True)
class Curve:
    """The target's score after removing (deletion) or adding (insertion) each fraction of pixels."""
    kind: str                 # "deletion" or "insertion"
    fractions: np.ndarray     # (steps + 1,) from 0 to 1
    scores: np.ndarray        # (steps + 1,)
    auc: float

    def as_dict(self) -> dict:
        return {"kind": self.kind, "auc": self.auc, "fractions": [round(float(f), 6) for f in self.fractions],
                "scores": [float(s) for s in self.scores]}


def auc(fractions: np.ndarray, scores: np.ndarray) -> float:
    """Area under a curve by the trapezoid rule (fractions ascending from 0 to 1)."""
    fractions, scores = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    return float(np.sum((scores[1:] + scores[:-1]) / 2 * np.diff(fractions)))


def baseline(x: np.ndarray, kind: str, preprocess, layout: str = "NCHW") -> np.ndarray:
    """What removed pixels become, for one model input (model layout, no batch axis).

    "zero": zeros in model space (the mean colour for mean/std presets, black for raw ones);
    "black": the model-space value of a black image; "blur": the image Gaussian-blurred (sigma 5, 11x11,
    as Petsiuk et al. use for insertion).
    """
    if kind == "zero":
        return np.zeros_like(x)
    hwc = x.transpose(1, 2, 0) if layout == "NCHW" else x
    if kind == "black":
        value = normalise_pixels(np.zeros(hwc.shape, np.uint8), preprocess).astype(x.dtype)
    elif kind == "blur":
        value = cv2.GaussianBlur(np.ascontiguousarray(hwc, np.float32), (11, 11), 5.0,
                                 borderType=cv2.BORDER_REFLECT).reshape(hwc.shape).astype(x.dtype)
    else:
        raise UserError(f"Unknown baseline '{kind}'; use one of {', '.join(BASELINES)}.")
    return value.transpose(2, 0, 1) if layout == "NCHW" else value


def pixel_order(saliency: np.ndarray) -> np.ndarray:
    """Rank of each pixel (0 = most salient); ties keep raster order so the result is deterministic."""
    flat = np.nan_to_num(np.asarray(saliency, np.float64)).ravel()
    order = np.argsort(-flat, kind="stable")
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size)
    return rank.reshape(saliency.shape)


def deletion_insertion(explainer: "Explainer", x: np.ndarray, saliency: np.ndarray, target: int,
                       output: str | None = None, steps: int = STEPS, probability: bool = True,
                       deletion_baseline: str = "zero", insertion_baseline: str = "blur") -> tuple[Curve, Curve]:
    """Deletion and insertion curves of one model input `x` (model layout, no batch axis) for a map.

    The map is resized to the model input when needed; the score is the target class's softmax probability
    (or its logit). Both curves' 2 * (steps + 1) inputs run through the model in one batched call.
    """
    if steps < 1:
        raise UserError(f"Deletion/insertion needs at least 1 step, not {steps}.")
    layout = explainer.spec.layout
    hw = x.shape[1:3] if layout == "NCHW" else x.shape[0:2]
    if saliency.shape != tuple(hw):
        saliency = cv2.resize(np.asarray(saliency, np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    rank = pixel_order(saliency)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * rank.size).astype(np.int64)
    masks = rank[None] < counts[:, None, None]                     # (steps + 1, H, W): pixels moved so far
    masks = masks[:, None] if layout == "NCHW" else masks[..., None]
    removed = baseline(x, deletion_baseline, explainer.preprocess, layout)
    start = baseline(x, insertion_baseline, explainer.preprocess, layout)
    inputs = np.concatenate([np.where(masks, removed[None], x[None]), np.where(masks, x[None], start[None])])
    output = explainer.output_name(output)
    info = explainer.task.output(output)
    normalised = bool(info is not None and info.normalised)
    scores = ClassTarget(output, index=int(target), probability=probability, normalised=normalised).score(
        explainer.run(inputs.astype(np.float32), [output]))
    scores = np.asarray(scores, np.float64)
    deletion, insertion = scores[:steps + 1], scores[steps + 1:]
    return (Curve("deletion", fractions, deletion, auc(fractions, deletion)),
            Curve("insertion", fractions, insertion, auc(fractions, insertion)))


def attribution_curves(explainer: "Explainer", batch: "Prepared", attributions: Sequence["Attribution"],
                       **kwargs) -> list[tuple[Curve, Curve]]:
    """Deletion and insertion curves for attributions of a batch's images (one per image, in order)."""
    return [deletion_insertion(explainer, batch.x[i], a.upsampled, a.target["index"], a.target.get("output"),
                               **kwargs) for i, a in enumerate(attributions)]
