"""The randomisation sanity check (Adebayo et al., 2018): randomise the weights layer by layer from the top
(cascading) and one layer at a time (independent); a map that barely changes does not depend on what the
model learned."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UserError
from ..graph import WeightLayer, weight_layers
from .similarity import similarity

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import Prepared

SANITY_MAX_SPEARMAN = 0.5  # mean rank correlation after the full cascade above which a method fails
__all__ = ["SANITY_MAX_SPEARMAN", "SanityResult", "SanityStep", "WeightLayer", "sanity_check", "weight_layers"]


@dataclass(frozen=True)
class SanityStep:
    """Maps after randomising some layers, compared with the original maps (means over images)."""
    mode: str                    # "cascade" (this layer and all above it) or "independent" (this layer only)
    layer: str                   # the lowest layer randomised at this step
    randomised: tuple[str, ...]  # every layer randomised at this step
    spearman: float
    ssim: float
    per_image: tuple[float, ...]  # Spearman per image
    example: np.ndarray | None = None  # the first image's randomised map at model-input size, for the report

    def as_dict(self) -> dict:
        return {"mode": self.mode, "layer": self.layer, "randomised": list(self.randomised),
                "spearman": self.spearman, "ssim": self.ssim, "per_image": list(self.per_image)}


@dataclass(frozen=True)
class SanityResult:
    """A method's randomisation check: passes when the full cascade leaves mean Spearman <= threshold."""
    method: str
    layer: str | None
    threshold: float
    steps: tuple[SanityStep, ...]
    original: np.ndarray | None = None  # the first image's original map at model-input size

    @property
    def cascade(self) -> list[SanityStep]:
        return [s for s in self.steps if s.mode == "cascade"]

    @property
    def independent(self) -> list[SanityStep]:
        return [s for s in self.steps if s.mode == "independent"]

    @property
    def final_spearman(self) -> float:
        """Mean Spearman after every weight layer is randomised (the last cascade step)."""
        return self.cascade[-1].spearman

    @property
    def final_ssim(self) -> float:
        return self.cascade[-1].ssim

    @property
    def passed(self) -> bool:
        return self.final_spearman <= self.threshold

    def verdict(self) -> str:
        """One sentence for reports."""
        if self.passed:
            return (f"{self.method} passes: after randomising every weight layer its maps keep a mean Spearman "
                    f"of {self.final_spearman:.2f} (<= {self.threshold:.2f}), so they depend on the learned weights.")
        return (f"{self.method} FAILS: after randomising every weight layer its maps keep a mean Spearman of "
                f"{self.final_spearman:.2f} (> {self.threshold:.2f}); they barely depend on what the model learned.")

    def as_dict(self) -> dict:
        return {"method": self.method, "layer": self.layer, "threshold": self.threshold, "passed": self.passed,
                "final_spearman": self.final_spearman, "final_ssim": self.final_ssim, "verdict": self.verdict(),
                "steps": [s.as_dict() for s in self.steps]}


def spread_depths(count: int, wanted: int | None) -> list[int]:
    """`wanted` indices in 1..count spread evenly and always including count (all when None)."""
    if wanted is None or wanted >= count:
        return list(range(1, count + 1))
    if wanted <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(1, count, wanted)})


def sanity_check(explainer: "Explainer", images, method: str, layer: str | None = "auto",
                 target: Any = "predicted", depths: int | None = None, independent: int | None = None,
                 threshold: float = SANITY_MAX_SPEARMAN, seed: int = 0, progress_desc: str | None = None,
                 **params) -> SanityResult:
    """Randomise weight layers from the top (cascade) and one at a time (independent); compare maps.

    `depths` limits the cascade to that many evenly spread depths (the full cascade is always included) and
    `independent` to that many evenly spread layers (0 skips it); None evaluates every one, as the paper does
    (one model load and explanation per step, so pass small numbers for deep models). Targets are fixed
    from the original model so both maps answer the same question.
    """
    from .. import methods as registry
    from ..progress import progress
    from ..surgery import randomise
    layers = weight_layers(explainer.model)
    if not layers:
        raise UserError("The model has no Conv, Gemm or MatMul layer with weights to randomise.")
    batch = explainer.prepare(images)
    cls = registry.get(method)
    layer_name = explainer.model.resolve_layer(layer) if cls.uses_layer else None
    original = explainer.explain(batch, method=method, target=target, layer=layer_name, **params)
    if len(original) != len(batch):
        raise UserError("The sanity check explains one target per image; use 'predicted' or a class index.")
    targets = [a.target.get("index", target) for a in original]
    top_down = list(reversed(layers))
    plan = [("cascade", top_down[:k]) for k in spread_depths(len(layers), depths)]
    plan += [("independent", [top_down[k - 1]]) for k in spread_depths(len(layers), independent)]
    steps = []
    for mode, chosen in progress(plan, desc=progress_desc or f"sanity {method}", quiet=explainer.quiet):
        names = [w for entry in chosen for w in entry.weights]
        other = explainer.twin(randomise(explainer.model.proto, names, seed=seed))
        maps = other.explain(_same_batch(batch), method=method, target=targets, layer=layer_name, **params)
        pairs = [similarity(a.upsampled, b.upsampled) for a, b in zip(original, maps)]
        steps.append(SanityStep(mode, chosen[-1].name, tuple(c.name for c in chosen),
                                float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs])),
                                tuple(p[0] for p in pairs), maps[0].upsampled))
    return SanityResult(method, layer_name, threshold, tuple(steps), original[0].upsampled)


def _same_batch(batch: "Prepared") -> "Prepared":
    """The batch's inputs without its cached outputs (those belong to the original model)."""
    from ..images import Prepared
    return Prepared(batch.x, batch.originals, batch.pixel_maps, batch.names, batch.spec, batch.preprocess)
