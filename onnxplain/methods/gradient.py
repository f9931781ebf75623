"""Pixel-space gradient methods on the converted torch module: saliency, SmoothGrad (and SquareGrad,
VarGrad), integrated gradients, guided backpropagation and deconvnet.

Maps are at model-input resolution. Channels are reduced as the papers show them:
max of |gradient| over channels (Simonyan et al.), or the signed channel sum with
`signed=True`; integrated gradients always sums attributions over channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..errors import MethodError
from . import register
from .base import Method, RawMaps
from .baselines import baseline
from .layout import chw_shape
from .noise import LazyNoise, noise_std, noise_tunnel
from .perturb import batches, choose
from .torch_common import forward, gradients, numpy_maps, reduce_channels, target_scores, to_tensor

if TYPE_CHECKING:
    from ..images import Prepared
    from ..targets import Target
    from .base import MethodContext

NOISE_KINDS = ("smoothgrad", "squaregrad", "vargrad")
CLIP_UPPER = ("block", "pass")
BASELINES = ("black", "blurred", "uniform")
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def input_gradients(context: "MethodContext", batch: "Prepared", targets: Sequence["Target"],
                    rule: str = "plain", clip_upper: str | None = None) -> torch.Tensor:
    """Gradient of each image's target score w.r.t. its input (model layout), in chunks of the batch size."""
    parts = []
    for rows in batches(len(batch), context.runtime.batch_size):
        x = to_tensor(context, batch.x[rows])
        parts.append(gradients(context, x, targets[rows], rule=rule, clip_upper=clip_upper).input)
    return torch.cat(parts)


def _gradient_extras(grads: torch.Tensor) -> list[dict]:
    """The full per-channel gradient of each image (model layout), for colour renderings."""
    return [{"gradient": g} for g in grads.detach().cpu().numpy()]


@register
class Saliency(Method):
    """Simonyan et al. (2014): the gradient of the target score w.r.t. the input pixels."""
    name = "saliency"
    engine = "torch"
    summary = "vanilla gradient: max |d score / d pixel| over channels"

    @dataclass(frozen=True)
    class Params:
        signed: bool = False  # False: max |grad| over channels (Simonyan); True: grad summed over channels

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        grads = input_gradients(context, batch, targets)
        return RawMaps(numpy_maps(reduce_channels(grads, batch.spec.layout, self.params.signed)))


@register
class GuidedBackprop(Method):
    """Springenberg et al. (2015): gradients where every ReLU passes back only positive gradient at positive input.

    At a Clip's upper bound (ReLU6 saturated at 6, slope 0) `clip_upper` chooses: "block" (the forward
    slope, the default here) or "pass" (treat the unit as the ReLU it bounds).
    """
    name = "guided-backprop"
    engine = "torch"
    summary = "guided backpropagation: ReLUs pass back positive gradients where their input was positive"
    rule = "guided"

    @dataclass(frozen=True)
    class Params:
        signed: bool = False       # False: max |grad| over channels; True: grad summed over channels
        clip_upper: str = "block"  # at a Clip's upper bound (saturated ReLU6): block | pass the gradient

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        choose(self.name, "clip_upper", self.params.clip_upper, CLIP_UPPER)
        grads = input_gradients(context, batch, targets, rule=self.rule, clip_upper=self.params.clip_upper)
        maps = reduce_channels(grads, batch.spec.layout, self.params.signed)
        return RawMaps(numpy_maps(maps), _gradient_extras(grads))


@register
class Deconvnet(GuidedBackprop):
    """Zeiler & Fergus (2014): ReLUs pass back the positive part of the gradient whatever their input was.

    At a Clip's upper bound `clip_upper` is "pass" by default (the forward is ignored) or "block".
    """
    name = "deconvnet"
    summary = "deconvnet: ReLUs pass back the positive part of the gradient, ignoring the forward"
    rule = "deconvnet"

    @dataclass(frozen=True)
    class Params:
        signed: bool = False       # False: max |grad| over channels; True: grad summed over channels
        clip_upper: str = "pass"   # at a Clip's upper bound (saturated ReLU6): pass | block the gradient


@register
class SmoothGrad(Method):
    """Smilkov et al. (2017): gradients averaged over `n` noisy copies of each image.

    kind: "smoothgrad" (mean gradient), "squaregrad" (mean squared gradient, Hooker et al.)
    or "vargrad" (variance of the gradient, Adebayo et al.). The noise's standard deviation
    is `sigma` times the image's value range (max - min, in model space), as in the paper.
    """
    name = "smoothgrad"
    engine = "torch"
    summary = "SmoothGrad / SquareGrad / VarGrad: gradients over noisy copies of the image"

    @dataclass(frozen=True)
    class Params:
        n: int = 50                # noisy copies per image
        sigma: float = 0.15        # noise std as a fraction of the image's value range (max - min)
        kind: str = "smoothgrad"   # smoothgrad | squaregrad | vargrad
        batch_size: int = 25       # noisy copies per forward/backward pass
        seed: int = 0              # noise seed (each image draws from its own generator seeded with it)
        signed: bool = False       # smoothgrad only: signed channel sum instead of max |mean grad|

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return max(1, int(params.n))

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        p = self.params
        choose(self.name, "kind", p.kind, NOISE_KINDS)
        if p.n < 1:
            raise MethodError("Parameter 'n' of method 'smoothgrad' must be at least 1.")
        layout = batch.spec.layout
        maps = []
        for i, image in enumerate(batch.x):
            mean, square = noisy_gradient_moments(context, image, targets[i], layout, p.n, p.sigma, p.seed,
                                                  p.batch_size)
            if p.kind == "smoothgrad":
                maps.append(reduce_channels(mean[None], layout, p.signed))
            else:
                value = square if p.kind == "squaregrad" else square - mean ** 2
                maps.append(reduce_channels(value[None], layout, False))
        return RawMaps(numpy_maps(torch.cat(maps)))


def noisy_gradient_moments(context: "MethodContext", image: np.ndarray, target: "Target", layout: str, n: int,
                           sigma: float, seed: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and mean square of the input gradient over `n` copies of one image plus Gaussian noise."""
    noise = LazyNoise(chw_shape(image, layout), n, noise_std(image, sigma), seed, layout)

    def gradient(noisy: torch.Tensor) -> torch.Tensor:
        return gradients(context, noisy, [target] * len(noisy)).input

    mean, square = noise_tunnel(gradient, to_tensor(context, image), noise, batch_size, order=2)
    return mean, square


def ig_coefficients(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, step sizes) of the path integral's quadrature, as captum defines them."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if steps < 2:
        raise MethodError("Riemann sums for integrated-gradients need steps >= 2.")
    kind = method.split("_")[1]
    sizes = np.full(steps, 1.0 / steps)
    if kind == "trapezoid":
        sizes[0] /= 2
        sizes[-1] /= 2
        alphas = np.linspace(0, 1, steps)
    elif kind == "left":
        alphas = np.linspace(0, 1 - 1 / steps, steps)
    elif kind == "middle":
        alphas = np.linspace(1 / (2 * steps), 1 - 1 / (2 * steps), steps)
    else:
        alphas = np.linspace(1 / steps, 1, steps)
    return alphas, sizes


def ig_baseline(batch: "Prepared", kind: str, blur_sigma: float, seed: int) -> np.ndarray:
    """The integrated-gradients baseline of each image, in model space and layout.

    black: pixel value 0 through the preprocessing; blurred: the image under a Gaussian blur
    (sigma in input pixels); uniform: uniform noise over the valid input range, the same for every image.
    """
    kinds = {"black": "black", "blurred": "blur", "uniform": "uniform"}
    return np.stack([baseline(x, batch.spec.layout, kinds[kind], sigma=blur_sigma, border="reflect101",
                              preprocess=batch.preprocess, seed=seed) for x in batch.x]).astype(np.float32)


@register
class IntegratedGradients(Method):
    """Sundararajan et al. (2017): (x - x') times the gradient integrated along the straight path from x' to x.

    The map is the attribution summed over channels (signed); extras hold the per-channel
    attribution and the completeness check: sum of attributions vs f(x) - f(x').
    """
    name = "integrated-gradients"
    engine = "torch"
    summary = "integrated gradients from a black, blurred or uniform-noise baseline (with completeness check)"

    @dataclass(frozen=True)
    class Params:
        steps: int = 50                    # quadrature points along the path
        quadrature: str = "gausslegendre"  # as captum's `method`: gausslegendre | riemann_{trapezoid,left,right,middle}
        baseline: str = "black"            # black (pixel 0 through the preprocessing) | blurred | uniform
        blur_sigma: float = 10.0           # blurred baseline: Gaussian sigma in model-input pixels
        batch_size: int = 32               # path points per forward/backward pass
        seed: int = 0                      # uniform baseline's seed

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return max(1, int(params.steps))

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        p = self.params
        choose(self.name, "baseline", p.baseline, BASELINES)
        choose(self.name, "quadrature", p.quadrature, IG_METHODS)
        if p.steps < 1:
            raise MethodError("Parameter 'steps' of method 'integrated-gradients' must be at least 1.")
        base = ig_baseline(batch, p.baseline, p.blur_sigma, p.seed)
        attributions = integrated_gradients(context, batch.x, base, targets, p.steps, p.quadrature, p.batch_size)
        ends = end_scores(context, batch.x, base, targets)
        layout = batch.spec.layout
        maps = reduce_channels(attributions, layout, signed=True)
        extras = []
        for i, attribution in enumerate(attributions.cpu().numpy()):
            total = float(attribution.astype(np.float64).sum())
            delta = float(ends[0][i] - ends[1][i])
            extras.append({"attribution": attribution, "baseline": p.baseline,
                           "completeness": {"sum_attr": total, "f(x)-f(baseline)": delta,
                                            "relative_error": abs(total - delta) / max(abs(delta), 1e-12)}})
        return RawMaps(numpy_maps(maps), extras)


def integrated_gradients(context: "MethodContext", x: np.ndarray, base: np.ndarray, targets: Sequence["Target"],
                         steps: int, method: str, batch_size: int) -> torch.Tensor:
    """Attributions (model layout) of each image against its baseline; path points of all images share passes."""
    alphas, sizes = ig_coefficients(steps, method)
    xs, bs = to_tensor(context, x), to_tensor(context, base)
    image_of = np.repeat(np.arange(len(x)), steps)
    step_of = np.tile(np.arange(steps), len(x))
    alpha = torch.as_tensor(alphas, dtype=torch.float32, device=xs.device)
    size = torch.as_tensor(sizes, dtype=torch.float32, device=xs.device)
    total = torch.zeros_like(xs)
    shape = (-1,) + (1,) * (xs.dim() - 1)
    for rows in batches(len(image_of), batch_size):
        img = torch.as_tensor(image_of[rows], device=xs.device)
        step = torch.as_tensor(step_of[rows], device=xs.device)
        points = bs[img] + alpha[step].view(shape) * (xs[img] - bs[img])
        g = gradients(context, points, [targets[int(i)] for i in image_of[rows]]).input
        total.index_add_(0, img, g * size[step].view(shape))
    return (xs - bs) * total


def end_scores(context: "MethodContext", x: np.ndarray, base: np.ndarray, targets: Sequence["Target"]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Target scores at the images and at their baselines (float64 numpy)."""
    scores = []
    with torch.no_grad():
        for value in (x, base):
            parts = []
            for rows in batches(len(value), context.runtime.batch_size):
                outputs, _ = forward(context, to_tensor(context, value[rows]))
                parts.append(target_scores(targets[rows], outputs).double().cpu().numpy())
            scores.append(np.concatenate(parts))
    return scores[0], scores[1]
