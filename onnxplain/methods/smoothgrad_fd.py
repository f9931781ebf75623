"""SmoothGrad without gradients: the gradient of the Gaussian-smoothed score, estimated from forward passes.

For f_s(x) = E[f(x + s e)], e ~ N(0, I), Stein's identity gives grad f_s(x) = E[f(x + s e) e] / s, and the
antithetic form E[(f(x + s e) - f(x - s e)) e] / (2 s) has the same expectation with the f(x) term and all
even-order terms cancelled. This is what SmoothGrad (Smilkov et al., 2017) averages with autograd, so the
map converges to SmoothGrad's as n grows, on any model onnxruntime runs.

Accuracy: for a score that is linear near x, each coordinate's estimate has variance (|g|^2 + g_j^2) / n,
so the relative error of the whole field is about sqrt(k / n), k = the number of noise values per image
(C x H x W, or C x grid cells). Drawing the noise on a coarse grid (`grid`) cuts k and estimates the
gradient averaged over about a grid cell. Correlation with the exact smoothed gradient grows as
corr^2 ~ n / (n + a): on EfficientNet-Lite0 at 224 (benchmarks/smoothgrad_fd.py) r = 0.12 with n = 4096,
so r = 0.9 takes about 1.1 million pairs; on a net with 192 input values 4096 pairs pass 0.9 (tested).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import MethodError
from ..images import value_range
from . import register
from .base import Method, RawMaps
from .layout import input_to_nchw_np, nchw_to_input_np
from .noise import moments, noise_std, standard_normal
from .perturb import chunk_size, run_chunks
from .resample import half_pixel_resize_matrix


@dataclass(frozen=True)
class SmoothGradFDParams:
    """n: antithetic noise pairs per image (2n forwards); error falls as 1/sqrt(n), see the module docstring.
    noise_level: noise std as a fraction of the image's value range (max - min), as in SmoothGrad (0.15).
    grid: 0 = independent noise per input value (unbiased for SmoothGrad); g > 0 = noise drawn on g cells
      along the shorter side (the longer side in proportion), bilinearly upsampled: far less variance,
      and the result is the gradient averaged over about one cell.
    signed: return the signed gradient summed over channels instead of |gradient| maxed over channels.
    seed: seeds the noise; every image of a call gets the same noise.
    """
    n: int = 256
    noise_level: float = 0.15
    grid: int = 7
    signed: bool = False
    seed: int = 0


@register
class SmoothGradFD(Method):
    """Gradient of the Gaussian-smoothed target score from antithetic forward passes; like saliency,
    the map is |gradient| maxed over channels (or, signed, the gradient summed over channels). The
    gradient itself (C, H, W) is in extras['gradient']."""
    name = "smoothgrad-fd"
    engine = "ort"
    summary = "SmoothGrad from forward passes only (antithetic Gaussian finite differences)"
    Params = SmoothGradFDParams

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return 2 * max(1, int(params.n))  # antithetic pairs: two forwards per draw

    def validate(self, hw: tuple[int, int]) -> None:
        p = self.params
        if p.n < 1:
            raise MethodError(f"Parameter 'n' of method '{self.name}' is the number of noise pairs and must be "
                              f">= 1, not {p.n}.")
        if not (math.isfinite(p.noise_level) and p.noise_level > 0):
            raise MethodError(f"Parameter 'noise_level' of method '{self.name}' must be > 0 (a fraction of the "
                              f"image's value range, e.g. 0.15), not {p.noise_level}.")
        if not 0 <= p.grid <= min(hw):
            raise MethodError(f"Parameter 'grid' of method '{self.name}' must be 0 (full resolution) or a cell "
                              f"count up to the input's shorter side ({min(hw)}), not {p.grid}.")

    def explain(self, context, batch, targets, layer=None) -> RawMaps:
        self.validate(batch.hw)
        layout = batch.spec.layout
        field = NoiseField(batch.hw, self.params.grid)
        pairs = max(1, chunk_size(context) // 2)
        sizes = [min(pairs, self.params.n - s) for s in range(0, self.params.n, pairs)]
        outputs = list(context.runtime.output_names)
        low, high = value_range(batch.preprocess)
        maps, extras = [], []
        for i, target in enumerate(targets):
            x = input_to_nchw_np(batch.x[i:i + 1], layout)[0]  # (C, H, W)
            sigma = noise_std(x, self.params.noise_level, float(np.max(high - low)))
            rng = np.random.default_rng(self.params.seed)
            draws = (standard_normal(rng, (k, len(x)) + field.shape) for k in sizes)

            def perturbed(noise: np.ndarray, x=x, sigma=sigma) -> np.ndarray:
                both = np.empty((2 * len(noise),) + x.shape, np.float32)
                plus, minus = both[:len(noise)], both[len(noise):]
                np.multiply(field.upsample(noise), np.float32(sigma), out=plus)
                np.subtract(x, plus, out=minus)
                plus += x
                return nchw_to_input_np(both, layout)

            def stein(chunk: tuple[np.ndarray, dict], target=target, sigma=sigma) -> np.ndarray:
                """(k, C, *field) estimates (f(x + s e) - f(x - s e)) / (2 s) e of one chunk of noise e."""
                noise, out = chunk
                scores = np.asarray(target.score(out), np.float64)
                k = len(noise)
                slopes = ((scores[:k] - scores[k:]) / (2 * sigma)).astype(np.float32)
                return slopes.astype(np.float64).reshape((k,) + (1,) * (noise.ndim - 1)) * noise

            runs = run_chunks(context, draws, len(sizes), perturbed, outputs, f"{self.name} {i + 1}/{len(batch)}")
            [mean] = moments(map(stein, runs), self.params.n)
            gradient = field.to_input(mean)
            maps.append(gradient.sum(0) if self.params.signed else np.abs(gradient).max(0))
            extras.append({"gradient": gradient, "sigma": sigma, "forwards": 2 * self.params.n})
        return RawMaps(np.stack(maps), extras)


class NoiseField:
    """Where the noise lives: every input value (grid 0) or a coarse grid bilinearly upsampled to the input."""

    def __init__(self, hw: tuple[int, int], grid: int):
        h, w = hw
        self.grid = grid
        if not grid:
            self.shape = (h, w)
            return
        self.shape = (grid, max(1, round(grid * w / h))) if h <= w else (max(1, round(grid * h / w)), grid)
        self.ry = half_pixel_resize_matrix(h, self.shape[0])  # (H, gh)
        self.rx = half_pixel_resize_matrix(w, self.shape[1])  # (W, gw)
        # U U^T 1 for the separable upsampling U: dividing by it makes U U^T a weighted average
        self.norm = np.outer(self.ry @ self.ry.sum(0), self.rx @ self.rx.sum(0))

    def upsample(self, noise: np.ndarray) -> np.ndarray:
        """(..., gh, gw) noise at input resolution (..., H, W)."""
        return noise if not self.grid else self.ry @ noise @ self.rx.T

    def to_input(self, estimate: np.ndarray) -> np.ndarray:
        """The averaged estimate (C, *shape) as a gradient at input resolution (C, H, W), float32.

        On a grid the estimate's expectation is U^T g; U U^T g / U U^T 1 is g averaged over about one cell.
        """
        if not self.grid:
            return estimate.astype(np.float32)
        return (self.upsample(estimate) / self.norm).astype(np.float32)
