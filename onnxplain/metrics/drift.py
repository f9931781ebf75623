"""Drift: the same images through two model files (e.g. fp32 and its int8 quantisation): agreement of
top-1 and top-k and the rank correlation of each method's maps."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..numeric import softmax
from .similarity import similarity

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..methods.base import Attribution


@dataclass(frozen=True)
class ImageDrift:
    """One image through two models: their top-k, agreement, and each method's map rank correlation."""
    image: str
    top_a: tuple[int, ...]
    top_b: tuple[int, ...]
    probability_a: float      # model A's probability of its top-1 class
    probability_b: float      # model B's probability of that same class
    spearman: dict[str, float] = field(default_factory=dict)
    ssim: dict[str, float] = field(default_factory=dict)

    @property
    def top1_agree(self) -> bool:
        return self.top_a[0] == self.top_b[0]

    @property
    def top5_overlap(self) -> float:
        """|top-k(A) & top-k(B)| / k with k = 5 or the number of classes."""
        return len(set(self.top_a) & set(self.top_b)) / len(self.top_a)

    def drift_key(self) -> tuple:
        """Sort key: images that drift most come first (top-1 change, then top-k, then map correlation)."""
        mean = float(np.mean(list(self.spearman.values()))) if self.spearman else 1.0
        return (self.top1_agree, self.top5_overlap, mean)

    def as_dict(self) -> dict:
        return {"image": self.image, "top_a": list(self.top_a), "top_b": list(self.top_b),
                "top1_agree": self.top1_agree, "top5_overlap": self.top5_overlap,
                "probability_a": self.probability_a, "probability_b": self.probability_b,
                "spearman": dict(self.spearman), "ssim": dict(self.ssim)}


@dataclass(frozen=True)
class DriftResult:
    """Drift over a set of images, most drifting first, with the summary metrics."""
    images: tuple[ImageDrift, ...]

    @property
    def top1_agreement(self) -> float:
        return float(np.mean([d.top1_agree for d in self.images])) if self.images else float("nan")

    @property
    def top5_overlap(self) -> float:
        return float(np.mean([d.top5_overlap for d in self.images])) if self.images else float("nan")

    def spearman(self, method: str) -> float:
        """Mean rank correlation of one method's maps between the models."""
        values = [d.spearman[method] for d in self.images if method in d.spearman]
        return float(np.mean(values)) if values else float("nan")

    def as_dict(self) -> dict:
        methods = sorted({m for d in self.images for m in d.spearman})
        return {"top1_agreement": self.top1_agreement, "top5_overlap": self.top5_overlap,
                "spearman": {m: self.spearman(m) for m in methods}, "images": [d.as_dict() for d in self.images]}


def layer_in(explainer: "Explainer", layer: str | None) -> str | None:
    """`layer` when the model has that tensor, else the model's own auto layer (quantised graphs rename some)."""
    if layer is None:
        return None
    if layer in explainer.model.tensors:
        return layer
    return explainer.model.resolve_layer("auto")


def image_drift(a: "Explainer", b: "Explainer", image, methods: Sequence[str] = (), layer: str | None = "auto",
                top: int = 5, params: dict[str, dict] | None = None,
                attributions: dict[str, "Attribution"] | None = None) -> ImageDrift:
    """Compare one image through models A and B; B explains A's top-1 class so the maps answer one question.

    `params` maps a method name to its parameters; `attributions` may hold A's maps already computed
    (method -> Attribution for A's top-1 class), as the audit has them.
    """
    from .. import methods as registry
    params = params or {}
    batch_a, batch_b = a.prepare([image]), b.prepare([image])
    pred_a, pred_b = a.predict(batch_a, top=top)[0], b.predict(batch_b, top=top)[0]
    top_a = tuple(t[0] for t in pred_a.top)
    scores_b = b.forward(batch_b)[b.output_name(None)].reshape(-1)
    info_b = b.task.output(b.output_name(None))
    probs_b = scores_b if info_b is not None and info_b.normalised else softmax(scores_b)
    prob_b = float(probs_b[top_a[0]]) if top_a[0] < scores_b.size else float("nan")
    spearmans, ssims = {}, {}
    for method in methods:
        uses_layer = registry.get(method).uses_layer
        map_a = (attributions or {}).get(method)
        if map_a is None:
            [map_a] = a.explain(batch_a, method=method, target=top_a[0], layer=layer if uses_layer else None,
                                **params.get(method, {}))
        layer_b = layer_in(b, map_a.layer) if uses_layer else None
        [map_b] = b.explain(batch_b, method=method, target=top_a[0], layer=layer_b, **params.get(method, {}))
        spearmans[method], ssims[method] = similarity(map_a.upsampled, map_b.upsampled)
    return ImageDrift(batch_a.names[0], top_a, tuple(t[0] for t in pred_b.top), float(pred_a.top[0][3]), prob_b,
                      spearmans, ssims)


def drift(a: "Explainer", b: "Explainer", images: Sequence, methods: Sequence[str] = (), layer: str | None = "auto",
          top: int = 5, params: dict[str, dict] | None = None) -> DriftResult:
    """The same images through two models, most drifting first; `params` maps a method name to its parameters."""
    from ..progress import progress
    results = [image_drift(a, b, image, methods, layer, top, params)
               for image in progress(list(images), desc="drift", quiet=a.quiet)]
    return DriftResult(tuple(sorted(results, key=ImageDrift.drift_key)))

