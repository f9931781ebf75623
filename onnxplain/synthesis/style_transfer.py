"""Texture synthesis and style transfer (Gatys et al. 2015, 2016) through the model's own layers.

A texture is matched by the Gram matrices of its features at several layers; style transfer adds
the features of a content image at one layer. Losses are relative (||G - A||^2 / ||A||^2 and
||F - P||^2 / ||P||^2) so the default weights suit any model's activation scale. L-BFGS (as
Gatys) or Adam, projected to the valid pixel range.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..images import ImageSource
from ..progress import progress
from .common import (Space, Synthesis, SynthesisError, check_at_least_zero, check_positive, evaluate,
                     feature_layers, layer_maps, make_params, params_dict)

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass(frozen=True)
class StyleParams:
    """Optimiser settings for texture and style (unit space, [-1, 1] = pixels 0..255)."""
    steps: int = 100             # Adam steps, or L-BFGS iterations (up to 1.25x as many evaluations)
    optimizer: str = "lbfgs"     # lbfgs | adam
    lr: float | None = None      # default: 1.0 for L-BFGS, 0.05 for Adam
    init: str = "auto"           # auto | noise | content (style only); auto: content for style, noise for texture
    init_std: float = 0.1
    seed: int = 0

    def __post_init__(self):
        check_positive(steps=self.steps)
        check_at_least_zero(init_std=self.init_std)
        if self.optimizer not in ("lbfgs", "adam"):
            raise SynthesisError(f"'optimizer' must be lbfgs or adam (got '{self.optimizer}').")
        if self.init not in ("auto", "noise", "content"):
            raise SynthesisError(f"'init' must be auto, noise or content (got '{self.init}').")
        if self.lr is not None and not self.lr > 0:
            raise SynthesisError(f"'lr' must be greater than 0 (got {self.lr}).")


STYLE_WEIGHT = 1e3  # content : style = 1e-3 as Gatys et al. (on relative losses), see the README


def gatys_content_layer(explainer: "Explainer") -> str:
    """The conv4_2 of a network: the second activation at the second-deepest resolution (else its first)."""
    deepest = feature_layers(explainer, pick="all")
    groups = [g for g in deepest if g]
    group = groups[max(0, len(groups) - 2)]
    return group[min(1, len(group) - 1)]


def canvas_space(explainer: "Explainer", space: Space, size: tuple[int, int], names: Sequence[str]) -> Space:
    """`space` at another (h, w), after checking that the model's layers run at that size."""
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise SynthesisError(f"The texture size must be positive pixels (got {size[0]}x{size[1]}).")
    canvas = replace(space, size=size)
    try:
        with torch.no_grad():
            _maps(explainer, canvas, canvas.noise(1, 0.0, 0), names)
    except (RuntimeError, ValueError) as exc:
        raise SynthesisError(f"The model cannot run at {size[0]}x{size[1]} ({str(exc).splitlines()[0][:120]}); "
                             "its graph fixes the input size, so synthesise at the model's size.") from None
    return canvas


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices (N, C, C) of (N, C, h, w) features: F F^T / (h * w), channel co-activation averaged
    over positions, so layers of any size weigh alike."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def _relative(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||value - reference||^2 / ||reference||^2 per image, shape (N,)."""
    diff = (value - reference).flatten(1).pow(2).sum(1)
    return diff / reference.flatten(1).pow(2).sum(1).clamp_min(1e-12)


def _layers(explainer: "Explainer", layers: Sequence[str] | None, pick: str = "last") -> list[str]:
    names = [explainer.model.resolve_layer(n) for n in layers] if layers else feature_layers(explainer, pick=pick)
    if not names:
        raise SynthesisError("Name at least one layer to take features from.")
    return list(dict.fromkeys(names))


def _weights(names: Sequence[str], weights: Sequence[float] | dict | None) -> list[float]:
    """One weight per layer: equal (1 / count) by default, a list in layer order, or a dict by name."""
    if weights is None:
        return [1.0 / len(names)] * len(names)
    if isinstance(weights, dict):
        unknown = set(weights) - set(names)
        if unknown:
            raise SynthesisError(f"Style weight for '{sorted(unknown)[0]}', which is not a style layer.")
        return [float(weights.get(n, 0.0)) for n in names]
    if len(weights) != len(names):
        raise SynthesisError(f"{len(weights)} style weights for {len(names)} style layers; give one per layer.")
    return [float(w) for w in weights]


def _maps(explainer: "Explainer", space: Space, u: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    values = evaluate(explainer, space.to_model(u), names)
    return {n: layer_maps(values[n], explainer.model.tensors.get(n)) for n in names}


def optimise(explainer: "Explainer", u: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
             p: StyleParams, desc: str) -> tuple[torch.Tensor, list[float]]:
    """Minimise `loss` (unit images -> scalar) from `u` with L-BFGS or Adam, kept in the valid range.

    Adam takes `steps` steps, clamped after each; L-BFGS runs up to `steps` iterations in one call
    (its curvature history needs that), clamping before each evaluation as the PyTorch style tutorial
    does. Returns the result and the loss at every evaluation, the last entry at the result.
    """
    u = u.detach().clone().requires_grad_(True)
    lbfgs = p.optimizer == "lbfgs"
    lr = p.lr or (1.0 if lbfgs else 0.05)
    evaluations = p.steps * 5 // 4 if lbfgs else p.steps
    ticks = iter(progress(range(evaluations), desc=desc, quiet=explainer.quiet))
    history: list[float] = []

    def closure() -> torch.Tensor:
        with torch.no_grad():
            u.clamp_(-1, 1)
        optimiser.zero_grad()
        with torch.enable_grad():
            value = loss(u)
            value.backward()
        history.append(float(value.detach()))
        next(ticks, None)
        return value

    if lbfgs:
        optimiser = torch.optim.LBFGS([u], lr=lr, max_iter=p.steps, max_eval=evaluations, history_size=20,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")
        optimiser.step(closure)
    else:
        optimiser = torch.optim.Adam([u], lr=lr)
        for _ in range(p.steps):
            optimiser.step(closure)
    next(ticks, None)  # close the bar
    with torch.no_grad():
        u.clamp_(-1, 1)
        history.append(float(loss(u)))
    return u.detach(), history


def texture(explainer: "Explainer", image: ImageSource, layers: Sequence[str] | None = None,
            weights: Sequence[float] | dict | None = None, params: StyleParams | None = None,
            size: tuple[int, int] | None = None, **overrides) -> Synthesis:
    """A new image with the texture of `image`: from noise, match its Gram matrices at `layers`
    (default: one per resolution, see feature_layers) with per-layer `weights` (default equal).

    `size` (h, w) synthesises a texture of that size, larger than the model input too: the model runs on
    the whole canvas (Gram matrices are averages over positions, so they compare across sizes); the
    source image is seen at the model's input size."""
    p = make_params(StyleParams, params, overrides)
    names = _layers(explainer, layers)
    layer_weights = _weights(names, weights)
    space = Space.of(explainer)
    source, _ = space.from_photo(explainer, image)
    with torch.no_grad():
        targets = {n: gram(v) for n, v in _maps(explainer, space, source, names).items()}
    if size is not None:
        space = canvas_space(explainer, space, size, names)

    def loss(u: torch.Tensor) -> torch.Tensor:
        maps = _maps(explainer, space, u, names)
        return sum(w * _relative(gram(maps[n]), targets[n]) for n, w in zip(names, layer_weights)).sum()

    u, history = optimise(explainer, space.noise(1, p.init_std, p.seed), loss, p, "texture")
    return Synthesis("texture", space.image(u[0]), history, params_dict(p),
                     {"layers": names, "weights": layer_weights, "start": history[0], "final": history[-1]})


def style(explainer: "Explainer", content: ImageSource, style_image: ImageSource, content_layer: str | None = None,
          style_layers: Sequence[str] | None = None, style_weights: Sequence[float] | dict | None = None,
          content_weight: float = 1.0, style_weight: float = STYLE_WEIGHT, params: StyleParams | None = None,
          **overrides) -> Synthesis:
    """The content of `content` (features at `content_layer`) painted in the style of `style_image` (Gram
    matrices at `style_layers`), from the content photo by default.

    Defaults as Gatys et al. 2016 (conv1_1 ... conv5_1 for style with equal weights, conv4_2 for content):
    the first activation at each resolution for style, the second activation at the second-deepest
    resolution for content. Loss = content_weight * content loss + style_weight * sum_l w_l * style loss_l,
    both relative, so the weights are not Gatys's 1e-3 ratio (that one is for raw sums of squares).
    """
    p = make_params(StyleParams, params, overrides)
    check_at_least_zero(content_weight=content_weight, style_weight=style_weight)
    names = _layers(explainer, style_layers, pick="first")
    layer_weights = _weights(names, style_weights)
    content_name = explainer.model.resolve_layer(content_layer) if content_layer else gatys_content_layer(explainer)
    space = Space.of(explainer)
    content_u, _ = space.from_photo(explainer, content)
    style_u, _ = space.from_photo(explainer, style_image)
    with torch.no_grad():
        content_target = _maps(explainer, space, content_u, [content_name])[content_name]
        style_targets = {n: gram(v) for n, v in _maps(explainer, space, style_u, names).items()}
    wanted = list(dict.fromkeys(names + [content_name]))

    def loss(u: torch.Tensor) -> torch.Tensor:
        maps = _maps(explainer, space, u, wanted)
        styled = sum(w * _relative(gram(maps[n]), style_targets[n]) for n, w in zip(names, layer_weights))
        return (content_weight * _relative(maps[content_name], content_target) + style_weight * styled).sum()

    start = space.noise(1, p.init_std, p.seed) if p.init == "noise" else content_u
    u, history = optimise(explainer, start, loss, p, "style")
    return Synthesis("style", space.image(u[0]), history,
                     {**params_dict(p), "content_weight": content_weight, "style_weight": style_weight},
                     {"content_layer": content_name, "style_layers": names, "style_weights": layer_weights,
                      "start": history[0], "final": history[-1]})
