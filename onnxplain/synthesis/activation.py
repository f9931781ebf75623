"""Activation maximisation: the image a channel, a neuron or a class score wants to see.

Gradient ascent from Gaussian noise with the regularisers of Yosinski et al. 2015 (L2 decay,
Gaussian blur every k steps, norm and contribution clipping) and PytorchRevelio (bilateral blur,
jitter), projected to the valid pixel range; optionally over octaves (optimise a small image that
the model sees upsampled, then upsample it and continue). Class visualisation (Simonyan et al.
2014) is the same ascent on S_c(I) - lambda ||I||^2 from a grey image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .. import render
from ..progress import progress
from . import regularisers as reg
from .common import (Objective, Space, Synthesis, SynthesisError, check_at_least_zero, check_positive,
                     make_objective, make_params, params_dict, scores)

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass(frozen=True)
class MaximizeParams:
    """Gradient ascent settings; every regulariser is off at 0. Units: unit space, [-1, 1] = pixels 0..255."""
    steps: int = 100             # steps per octave
    lr: float = 0.02             # step = lr * grad / mean|grad| per image, so any model's gradient scale works
    seed: int = 0
    init_std: float = 0.1        # Gaussian noise around mid-grey to start from (0: a grey image)
    l2_decay: float = 1e-4       # u <- (1 - l2_decay) u after each step (Yosinski's decay)
    l2_penalty: float = 0.0      # lambda in S - lambda ||u||^2 (Simonyan's penalty, inside the objective)
    blur_every: int = 4          # Gaussian blur every k steps (Yosinski)
    blur_sigma: float = 0.5      # in pixels
    bilateral_every: int = 0     # bilateral blur every k steps (PytorchRevelio): smooth, keep edges
    bilateral_sigma_color: float = 20.0  # in pixel values (0..255)
    bilateral_sigma_space: float = 2.0   # in pixels
    jitter: int = 4              # random roll of up to this many pixels before each step
    norm_pct: float = 0.0        # clip pixels with colour norm below this percentile (Yosinski)
    contrib_pct: float = 0.0     # clip pixels with contribution below this percentile (Yosinski)
    octaves: int = 1             # > 1: start at size / octave_scale^(octaves-1), upsample between octaves
    octave_scale: float = 1.4

    def __post_init__(self):
        check_positive(steps=self.steps, lr=self.lr, octaves=self.octaves, octave_scale=self.octave_scale,
                       blur_sigma=self.blur_sigma, bilateral_sigma_color=self.bilateral_sigma_color,
                       bilateral_sigma_space=self.bilateral_sigma_space)
        check_at_least_zero(init_std=self.init_std, l2_decay=self.l2_decay, l2_penalty=self.l2_penalty,
                            blur_every=self.blur_every, bilateral_every=self.bilateral_every, jitter=self.jitter,
                            norm_pct=self.norm_pct, contrib_pct=self.contrib_pct)
        if self.l2_decay >= 1 or self.norm_pct >= 100 or self.contrib_pct >= 100:
            raise SynthesisError("'l2_decay' must be below 1 and the clipping percentiles below 100.")


def ascend(explainer: "Explainer", space: Space, objective: Objective, u: torch.Tensor, p: MaximizeParams,
           desc: str) -> tuple[torch.Tensor, list[float]]:
    """Regularised gradient ascent of `objective` from unit images `u` (N images, one objective row each).

    Returns the final images at full size and the mean objective per step, the last entry at the result.
    """
    generator = torch.Generator().manual_seed(int(p.seed) + 1)
    sizes = reg.octave_sizes(space.size, p.octaves, p.octave_scale)
    history: list[float] = []
    steps = [(size, step) for size in sizes for step in range(p.steps)]
    for size, step in progress(steps, desc=desc, quiet=explainer.quiet):
        u = reg.resize(u, size).detach().requires_grad_(True)
        with torch.enable_grad():
            value = scores(explainer, objective, space.to_model(reg.jitter(u, p.jitter, generator)))
            total = value - p.l2_penalty * u.pow(2).flatten(1).sum(1)
            grad, = torch.autograd.grad(total.sum(), u)
        history.append(float(total.detach().mean()))
        with torch.no_grad():
            u = u + p.lr * grad / (grad.abs().flatten(1).mean(1).reshape(-1, 1, 1, 1) + 1e-12)
            u = u * (1 - p.l2_decay)
            if p.blur_every and (step + 1) % p.blur_every == 0:
                u = reg.gaussian_blur(u, p.blur_sigma)
            if p.bilateral_every and (step + 1) % p.bilateral_every == 0:
                u = reg.bilateral_blur(u, p.bilateral_sigma_color, p.bilateral_sigma_space)
            if p.norm_pct:
                u = reg.clip_small_norm(u, p.norm_pct)
            if p.contrib_pct:
                u = reg.clip_small_contribution(u, grad, p.contrib_pct)
            u = u.clamp(-1, 1)
    u = reg.resize(u.detach(), space.size)
    with torch.no_grad():
        final = scores(explainer, objective, space.to_model(u)) - p.l2_penalty * u.pow(2).flatten(1).sum(1)
    history.append(float(final.mean()))
    return u, history


def _start(space: Space, count: int, p: MaximizeParams) -> torch.Tensor:
    return space.noise(count, p.init_std, p.seed, reg.octave_sizes(space.size, p.octaves, p.octave_scale)[0])


def maximize(explainer: "Explainer", layer: str | None = None, channel: int | None = None,
             position: tuple[int, int] | str | None = None, target: int | str | None = None,
             output: str | None = None, params: MaximizeParams | None = None, **overrides) -> Synthesis:
    """The image that maximises one channel's mean activation (`layer`, `channel`), one neuron (plus
    `position`, (row, col) or 'centre') or a class score before softmax (`target`, index or name).

    Keyword overrides set MaximizeParams fields. Returns the RGB uint8 model-input image and the history.
    """
    p = make_params(MaximizeParams, params, overrides)
    objective = make_objective(explainer, layer, channel, position, target, output)
    space = Space.of(explainer)
    u, history = ascend(explainer, space, objective, _start(space, 1, p), p, f"maximize {objective.kind}")
    return Synthesis("maximize", space.image(u[0]), history, params_dict(p),
                     {"objective": objective.describe(), "start": history[0], "final": history[-1]})


@dataclass(frozen=True)
class ClassVisParams:
    """Simonyan et al. 2014: arg max S_c(I) - lam ||I||^2 by gradient ascent from a grey image."""
    steps: int = 200
    lr: float = 0.02
    lam: float = 1e-4            # weight of ||u||^2 (sum over the unit image)
    seed: int = 0
    init_std: float = 0.0        # Simonyan start from the (zero-centred) grey image
    jitter: int = 0
    blur_every: int = 0
    blur_sigma: float = 0.5

    def __post_init__(self):
        check_positive(steps=self.steps, lr=self.lr, blur_sigma=self.blur_sigma)
        check_at_least_zero(lam=self.lam, init_std=self.init_std, jitter=self.jitter, blur_every=self.blur_every)


def class_vis(explainer: "Explainer", target: int | str, output: str | None = None,
              params: ClassVisParams | None = None, **overrides) -> Synthesis:
    """Simonyan's class model: the image with the highest class score (before softmax) under an L2 penalty.

    The history holds S_c - lam ||u||^2 at each step. Keyword overrides set ClassVisParams fields.
    """
    p = make_params(ClassVisParams, params, overrides)
    ascent = MaximizeParams(steps=p.steps, lr=p.lr, seed=p.seed, init_std=p.init_std, l2_decay=0.0,
                            l2_penalty=p.lam, blur_every=p.blur_every, blur_sigma=p.blur_sigma, jitter=p.jitter)
    objective = make_objective(explainer, target=target, output=output)
    space = Space.of(explainer)
    u, history = ascend(explainer, space, objective, _start(space, 1, ascent), ascent, "class-vis")
    with torch.no_grad():
        score = float(scores(explainer, objective, space.to_model(u))[0])
    return Synthesis("class-vis", space.image(u[0]), history, params_dict(p),
                     {"objective": objective.describe(), "label": explainer.label(objective.channel),
                      "score": score, "start": history[0], "final": history[-1]})


def maximize_grid(explainer: "Explainer", layer: str | None = "auto", channels: Sequence[int] | None = None,
                  params: MaximizeParams | None = None, batch_size: int = 16, tile: int = 64,
                  columns: int | None = None, **overrides) -> Synthesis:
    """Many channels of one layer at once, one image per channel in one batch, as a labelled grid.

    `channels` defaults to the first 16. Each image's noise comes from one seeded stream, so a channel's
    image does not depend on `batch_size` (rows never mix). Returns the grid as the image, the tiles,
    and the mean objective over channels per step.
    """
    p = make_params(MaximizeParams, params, overrides)
    check_positive(batch_size=batch_size, tile=tile)
    name = explainer.model.resolve_layer(layer)
    info = explainer.model.tensors[name]
    count = info.channels if info.spatial else (info.shape[1] if info.shape and len(info.shape) == 2 else None)
    chosen = list(channels) if channels is not None else list(range(min(16, count or 16)))
    if not chosen:
        raise SynthesisError("'channels' is empty; name at least one channel.")
    make_objective(explainer, name, chosen)  # validates every channel
    fixed_batch = explainer.input.shape[0] if explainer.input.shape else None
    batch_size = fixed_batch if isinstance(fixed_batch, int) else batch_size
    space = Space.of(explainer)
    start = _start(space, len(chosen), p)
    tiles, finals, histories = [], [], []
    for first in range(0, len(chosen), batch_size):
        rows = chosen[first:first + batch_size]
        objective = Objective("channel", name, tuple(rows))
        u, history = ascend(explainer, space, objective, start[first:first + len(rows)], p, f"grid {first}")
        with torch.no_grad():
            finals.extend(float(v) for v in scores(explainer, objective, space.to_model(u)))
        tiles.extend(space.image(row) for row in u)
        histories.append(np.asarray(history) * len(rows))
    history = (np.sum(histories, axis=0) / len(chosen)).tolist()
    image = render.grid(tiles, columns=columns, labels=[str(c) for c in chosen], tile_size=tile)
    return Synthesis("grid", image, history, {**params_dict(p), "batch_size": batch_size, "tile": tile},
                     {"layer": name, "channels": chosen, "final": finals}, tuple(tiles))
