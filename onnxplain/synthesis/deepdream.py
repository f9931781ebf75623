"""DeepDream (Mordvintsev et al. 2015): amplify what a layer already sees in a photo.

Gradient ascent on 0.5 * mean(A^2) of the layer, with L1-normalised steps (step / mean|grad|),
jitter, and octaves: the photo is shrunk, the detail found at each octave is carried up to the
next. The model always sees its own input size (smaller octaves are upsampled into it), so
models with a fixed input size dream too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..images import ImageSource
from ..progress import progress
from . import regularisers as reg
from .common import (Objective, Space, Synthesis, check_at_least_zero, check_positive, make_params, params_dict,
                     scores)

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass(frozen=True)
class DreamParams:
    """DeepDream settings; lr is in unit space ([-1, 1] = pixels 0..255): 0.012 ~ 1.5 pixels per step."""
    steps: int = 10              # per octave
    lr: float = 0.012
    octaves: int = 4
    octave_scale: float = 1.4
    jitter: int = 16             # pixels at full size, scaled down with each octave
    seed: int = 0

    def __post_init__(self):
        check_positive(steps=self.steps, lr=self.lr, octaves=self.octaves, octave_scale=self.octave_scale)
        check_at_least_zero(jitter=self.jitter)


def dream(explainer: "Explainer", image: ImageSource, layer: str | None = "auto",
          params: DreamParams | None = None, **overrides) -> Synthesis:
    """The photo (resized to the model input as `prepare` does) with what `layer` sees amplified.

    The history starts with the photo's objective, then each step's, and ends at the returned image.
    Keyword overrides set DreamParams fields.
    """
    p = make_params(DreamParams, params, overrides)
    name = explainer.model.resolve_layer(layer)
    objective = Objective("norm", name)
    space = Space.of(explainer)
    photo, _ = space.from_photo(explainer, image)
    generator = torch.Generator().manual_seed(int(p.seed) + 1)
    with torch.no_grad():
        history = [float(scores(explainer, objective, space.to_model(photo))[0])]
    sizes = reg.octave_sizes(space.size, p.octaves, p.octave_scale)
    detail = torch.zeros_like(reg.resize(photo, sizes[0]))
    for size in progress(sizes, desc="dream octaves", quiet=explainer.quiet):
        base = reg.resize(photo, size)
        u = base + reg.resize(detail, size)
        shift = max(0, round(p.jitter * size[0] / space.size[0]))
        for _ in range(p.steps):
            u = u.detach().requires_grad_(True)
            with torch.enable_grad():
                value = scores(explainer, objective, space.to_model(reg.jitter(u, shift, generator)))
                grad, = torch.autograd.grad(value.sum(), u)
            history.append(float(value[0].detach()))
            with torch.no_grad():
                u = (u + p.lr * grad / (grad.abs().mean() + 1e-12)).clamp(-1, 1)
        detail = (u - base).detach()
    u = u.detach()
    with torch.no_grad():
        history.append(float(scores(explainer, objective, space.to_model(u))[0]))
    return Synthesis("dream", space.image(u[0]), history, params_dict(p),
                     {"layer": name, "objective": objective.describe(), "start": history[0],
                      "final": history[-1]})
