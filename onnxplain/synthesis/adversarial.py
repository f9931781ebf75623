"""Fooling images: targeted projected gradient descent (Madry et al. 2018) under an L-infinity budget.

The attack works on the model-input image (the photo resized as `prepare` does) in whole pixels:
each step moves every pixel by `alpha` against the gradient of the target's cross-entropy, projects
back into the eps-ball around the photo and the valid range, and rounds to uint8 values. A budget of
eps (pixels / 255) is eps * 255 * scale / std_c in model units for channel c. The attack stops when
the target is top-1 (by `margin` logits) and onnxruntime agrees on the rounded uint8 image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..images import ImageSource
from ..progress import progress
from .common import (Adversarial, Space, SynthesisError, check_at_least_zero, check_positive, class_index,
                     class_logits, evaluate, input_batch, make_params, params_dict, quantise)

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass(frozen=True)
class FoolParams:
    """PGD settings: budget and step in pixel units / 255 (8/255 = 8 pixel values), logits margin."""
    eps: float = 8 / 255
    alpha: float = 1 / 255       # per step; whole pixels keep the image on the uint8 grid
    steps: int = 50              # most gradient steps
    margin: float = 0.0          # target logit - best other logit needed to stop
    random_start: bool = False   # Madry's uniform start inside the ball (seeded)
    seed: int = 0

    def __post_init__(self):
        check_positive(eps=self.eps, alpha=self.alpha, steps=self.steps)
        check_at_least_zero(margin=self.margin)
        if math.floor(self.eps * 255 + 1e-6) < 1:
            raise SynthesisError(f"'eps' ({self.eps:.4g}) is below one pixel value (1/255); give at least 1/255.")


def _reached(logits: np.ndarray | torch.Tensor, index: int, margin: float) -> bool:
    """Whether the target is top-1 by at least `margin` logits."""
    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    others = np.delete(row, index)
    return bool(others.size == 0 or row[index] - others.max() >= margin and row[index] > others.max())


def _check(explainer: "Explainer", image: np.ndarray, tensor: str) -> np.ndarray:
    """onnxruntime's class scores for exactly this uint8 model-input image."""
    return explainer.run(input_batch(explainer, image, "fool").x, [tensor])[tensor].reshape(-1)


def fool(explainer: "Explainer", image: ImageSource, target: int | str, output: str | None = None,
         params: FoolParams | None = None, **overrides) -> Adversarial:
    """A copy of the photo's model-input image, within the L-infinity budget, that the model calls `target`.

    Returns the uint8 image, the target's log-probability per step, the steps taken, onnxruntime's
    confidence and top-1 class on the returned image, and the L-infinity it used (in pixel units).
    Keyword overrides set FoolParams fields.
    """
    p = make_params(FoolParams, params, overrides)
    tensor = class_logits(explainer, output)
    index = class_index(explainer, target, tensor)
    space = Space.of(explainer)
    photo, original = space.from_photo(explainer, image)
    u0 = quantise(photo)
    budget = math.floor(p.eps * 255 + 1e-6)
    radius, step_size = budget / 127.5, p.alpha * 2.0   # pixel units -> unit space (1 unit = 127.5 pixels)
    u = u0
    if p.random_start:
        generator = torch.Generator().manual_seed(int(p.seed))
        start = (torch.rand(u0.shape, generator=generator) * 2 - 1).to(u0.device) * radius
        u = quantise((u0 + start).clamp(-1, 1))
    history: list[float] = []
    taken, success, scores = 0, False, None
    for step in progress(range(p.steps + 1), desc="fool", quiet=explainer.quiet):
        u = u.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = evaluate(explainer, space.to_model(u), [tensor])[tensor].reshape(1, -1)
            log_p = torch.log_softmax(logits, dim=1)[0, index]
            grad, = torch.autograd.grad(log_p, u)
        history.append(float(log_p.detach()))
        taken = step
        if _reached(logits.detach().cpu().numpy(), index, p.margin):
            scores = _check(explainer, space.image(u[0]), tensor)
            if _reached(scores, index, p.margin):
                success = True
                break
        if step == p.steps:
            break
        with torch.no_grad():
            moved = u + step_size * grad.sign()
            u = quantise((u0 + (moved - u0).clamp(-radius, radius)).clamp(-1, 1))
    result = space.image(u.detach()[0])
    if scores is None or not success:
        scores = _check(explainer, result, tensor)
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
    linf = int(np.abs(result.astype(np.int16) - original.astype(np.int16)).max())
    return Adversarial("fool", result, history, params_dict(p),
                       {"tensor": tensor, "budget_pixels": budget}, original=original, target=index,
                       label=explainer.label(index), steps=taken, confidence=float(probabilities[index]),
                       predicted=int(np.argmax(scores)), linf=linf, success=success)
