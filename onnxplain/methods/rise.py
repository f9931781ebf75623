"""RISE (Petsiuk, Das & Saenko, 2018): saliency as the score-weighted average of random smooth masks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import MethodError
from . import register
from .base import MultiTargetMethod, RawMaps
from .perturb import SCORES, choose, chunk_size, run_chunks, scores_of, with_score
from .resample import half_pixel_resize_matrix


@dataclass(frozen=True)
class RiseParams:
    """n: number of random masks (forwards per image); the paper uses 4000 (8000 for ResNet-50).
    grid: cells per side of the coarse binary grid (the paper's s = 7).
    p: probability that a cell is kept (1) rather than masked (0).
    seed: seeds the masks; every image of a call gets the same masks.
    score: the target's softmax probability (as the paper) or its logit (class targets; callables as given).
    control_variate: subtract the mean score as a control variate: the same expected map as the paper's
      formula, without the noise that the masks' uneven coverage of the image adds to it (this noise
      dominates when scores vary little); False gives the paper's formula verbatim.
    """
    n: int = 4000
    grid: int = 7
    p: float = 0.5
    seed: int = 0
    score: str = "probability"
    control_variate: bool = True


MASK_BYTES = 2**30  # most memory the coarse mask grids of one call may take


@register
class Rise(MultiTargetMethod):
    """sum_i score(x * M_i) M_i / (n p), with a control variate by default.

    Each mask is a random s x s binary grid, bilinearly upsampled to (s + 1) x cell pixels
    (cell = ceil(side / s)) and cropped at a random shift in [0, cell), as the authors' code does;
    masked pixels go to 0 in model-input space.
    """
    name = "rise"
    engine = "ort"
    summary = "score-weighted average of random smooth masks (Petsiuk et al.)"
    Params = RiseParams

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return max(1, int(params.n))

    def validate(self, hw: tuple[int, int]) -> None:
        p = self.params
        choose(self.name, "score", p.score, SCORES)
        if p.n < 1:
            raise MethodError(f"Parameter 'n' of method 'rise' is the number of masks and must be >= 1, not {p.n}.")
        if not 0 < p.p <= 1:
            raise MethodError(f"Parameter 'p' of method 'rise' is a keep probability in (0, 1], not {p.p}.")
        if not 1 <= p.grid <= min(hw):
            raise MethodError(f"Parameter 'grid' of method 'rise' must be between 1 and the input's shorter side "
                              f"({min(hw)}), not {p.grid}.")
        if p.n * p.grid * p.grid * 4 > MASK_BYTES:  # the coarse grids of all masks are drawn up front
            raise MethodError(f"Method 'rise' with n={p.n} and grid={p.grid} needs {p.n * p.grid ** 2 * 4 / 2**30:.1f} "
                              "GiB of coarse masks, over 1 GiB; lower n or grid.")

    def explain_many(self, context, batch, targets, layer=None) -> RawMaps:
        self.validate(batch.hw)
        masks = RiseMasks(batch.hw, self.params.n, self.params.grid, self.params.p, self.params.seed)
        n, step = self.params.n, chunk_size(context)
        outputs = list(context.runtime.output_names)
        maps = []
        for i, image_targets in enumerate(targets):
            image_targets = [with_score(t, self.params.score) for t in image_targets]
            x = batch.x[i][None]
            chunks = (masks.make(s, min(s + step, n)) for s in range(0, n, step))

            def masked(m: np.ndarray, x=x) -> np.ndarray:
                return x * batch.spatial_mask(m)

            # (targets, H*W) sums of score x mask: float64, the size of the maps themselves
            weighted, coverage, scores = np.zeros((len(image_targets), masks.pixels)), np.zeros(batch.hw), []
            for chunk, out in run_chunks(context, chunks, math.ceil(n / step), masked, outputs,
                                         f"{self.name} {i + 1}/{len(batch)}"):
                scores.append(scores_of(image_targets, out))
                weighted += scores[-1].astype(np.float32) @ chunk.reshape(len(chunk), -1)
                coverage += chunk.sum(0)
            scores = np.concatenate(scores, axis=1)
            maps.extend(saliency(w.reshape(batch.hw), coverage, s, self.params.p, self.params.control_variate)
                        for w, s in zip(weighted, scores))
        return RawMaps(np.stack(maps), [{"forwards": n} for _ in maps])


def saliency(weighted: np.ndarray, coverage: np.ndarray, scores: np.ndarray, p: float,
             control_variate: bool) -> np.ndarray:
    """The RISE map from sum_i s_i M_i (`weighted`), sum_i M_i (`coverage`) and the scores s_i.

    The paper's estimate is weighted / (n p). Since E[M] = p is known, subtracting mean(s) (coverage / (n p) - 1)
    keeps its expectation and removes the term in which uneven mask coverage multiplies the mean score.
    """
    n = len(scores)
    result = weighted / (n * p)
    if control_variate:
        mean = scores.mean()
        result -= mean * (coverage / (n * p) - 1)
    return result.astype(np.float32)


class RiseMasks:
    """The n masks of one call, drawn once (coarse grids and shifts) and built at full size on demand.

    Building a chunk is three batched matrix products: crop(upsample(G)) = Ry[shift_y + rows] @ G @
    Rx[shift_x + cols]^T, since cropping rows of a linear upsampling is taking rows of its matrix.
    """

    def __init__(self, hw: tuple[int, int], n: int, grid: int, p: float, seed: int):
        rng = np.random.default_rng(seed)
        self.hw = hw
        self.pixels = hw[0] * hw[1]
        self.grids = (rng.random((n, grid, grid)) < p).astype(np.float32)
        cells = [math.ceil(side / grid) for side in hw]
        self.shifts = [rng.integers(0, cell, n) for cell in cells]
        self.up = [half_pixel_resize_matrix((grid + 1) * cell, grid, border="mirror") for cell in cells]

    def make(self, start: int, stop: int) -> np.ndarray:
        """Masks start..stop-1 as (stop - start, H, W) float32 in [0, 1]."""
        (h, w), (sy, sx), (ry, rx) = self.hw, self.shifts, self.up
        rows = ry[sy[start:stop, None] + np.arange(h)]  # (k, H, grid)
        cols = rx[sx[start:stop, None] + np.arange(w)]  # (k, W, grid)
        return rows @ self.grids[start:stop] @ cols.transpose(0, 2, 1)
