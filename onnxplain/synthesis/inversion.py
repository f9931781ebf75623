"""Feature inversion (Mahendran & Vedaldi 2015): the image a layer's features of a photo describe.

From noise, Adam minimises ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2 + tv_weight * TV^beta(x)
+ alpha_weight * ||x||_alpha^alpha (the priors keep the result an image), projected to the
valid pixel range after each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..images import ImageSource
from ..progress import progress
from . import regularisers as reg
from .common import Space, Synthesis, check_at_least_zero, check_positive, evaluate, make_params, params_dict

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass(frozen=True)
class InvertParams:
    """Inversion settings, in unit space ([-1, 1] = pixels 0..255)."""
    steps: int = 200
    lr: float = 0.05             # Adam
    tv_weight: float = 0.5
    beta: float = 2.0            # TV exponent
    alpha_weight: float = 0.05
    alpha: float = 6.0           # alpha-norm exponent
    init_std: float = 0.1
    seed: int = 0

    def __post_init__(self):
        check_positive(steps=self.steps, lr=self.lr, beta=self.beta, alpha=self.alpha)
        check_at_least_zero(tv_weight=self.tv_weight, alpha_weight=self.alpha_weight, init_std=self.init_std)


def feature_distance(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||phi - phi0||^2 / ||phi0||^2 per image, shape (N,): 0 when the features match, 1 for all-zero features."""
    diff = (features - reference).flatten(1).pow(2).sum(1)
    return diff / reference.flatten(1).pow(2).sum(1).clamp_min(1e-12)


def invert(explainer: "Explainer", image: ImageSource, layer: str | None = "auto",
           params: InvertParams | None = None, **overrides) -> Synthesis:
    """An image whose features at `layer` match those of the photo (resized as `prepare` does).

    The history holds the total loss per step (the last at the returned image); details give the
    relative feature distance at the start and at the end. Keyword overrides set InvertParams fields.
    """
    p = make_params(InvertParams, params, overrides)
    name = explainer.model.resolve_layer(layer)
    space = Space.of(explainer)
    photo, _ = space.from_photo(explainer, image)
    with torch.no_grad():
        reference = evaluate(explainer, space.to_model(photo), [name])[name]

    def losses(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = feature_distance(evaluate(explainer, space.to_model(u), [name])[name], reference)
        prior = p.tv_weight * reg.total_variation(u, p.beta) + p.alpha_weight * reg.alpha_norm(u, p.alpha)
        return distance, distance + prior

    u = space.noise(1, p.init_std, p.seed).requires_grad_(True)
    optimiser = torch.optim.Adam([u], lr=p.lr)
    history: list[float] = []
    start = None
    for _ in progress(range(p.steps), desc="invert", quiet=explainer.quiet):
        optimiser.zero_grad()
        with torch.enable_grad():
            distance, loss = losses(u)
            loss.sum().backward()
        start = float(distance[0].detach()) if start is None else start
        history.append(float(loss[0].detach()))
        optimiser.step()
        with torch.no_grad():
            u.clamp_(-1, 1)
    with torch.no_grad():
        distance, loss = losses(u)
    history.append(float(loss[0]))
    return Synthesis("invert", space.image(u[0]), history, params_dict(p),
                     {"layer": name, "feature_distance_start": start, "feature_distance": float(distance[0])})
