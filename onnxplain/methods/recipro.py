"""Recipro-CAM (Byun & Lee, 2022): keep the layer's features around one position at a time, run the tail,
and read the target's softmax probability as that position's value. Forward passes of the tail only."""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from ..targets import ClassTarget
from . import register
from .base import MultiTargetMethod, RawMaps
from .layout import from_channels_first_np
from .perturb import choose, layer_activations, tail_scores_many

KEEP_BYTES = 1 << 26  # a zeroed masking buffer up to this size is kept per thread for the next call
_kept = threading.local()
GAUSSIAN = np.array([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]])


def position_masks(h: int, w: int, kind: str) -> np.ndarray:
    """(h*w, h, w): for each position (row-major) a mask centred on it, the 3x3 Gaussian kernel of the
    reference implementation (cut at the borders) or the position alone ("binary")."""
    kernel = GAUSSIAN if kind == "gaussian" else np.array([[0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
    padded = np.zeros((h * w, h + 2, w + 2))
    k = np.arange(h * w)
    rows, cols = k // w, k % w
    for di in range(3):
        for dj in range(3):
            padded[k, rows + di, cols + dj] = kernel[di, dj]
    return padded[:, 1:-1, 1:-1]


class SparseMasked:
    """`make(rows)` for an NCHW layer: the masked maps acts * M_k for k in `rows`, written into one reused zeroed
    buffer. A mask has at most 9 non-zero positions, so only those C-long columns are written (and zeroed
    again before the next chunk) instead of multiplying the whole (rows, C, h, w) block: equal values, about
    a tenth of the memory traffic. The zeroed buffer is kept per thread (`release`), so the next image or call
    skips allocating and first touching it."""

    def __init__(self, acts: np.ndarray, masks: np.ndarray, rows_max: int):
        self.acts = acts  # (C, h, w)
        self.k, self.r, self.c = np.nonzero(masks)
        self.values = masks[self.k, self.r, self.c].astype(acts.dtype)
        self.buffer = self._zeros(min(rows_max, len(masks)))
        self.written: tuple | None = None

    def _zeros(self, rows: int) -> np.ndarray:
        """A zeroed (rows, C, h, w) buffer: this thread's kept one when it fits, else a new one."""
        kept = getattr(_kept, "buffer", None)
        if kept is not None and kept.dtype == self.acts.dtype and kept.shape[1:] == self.acts.shape \
                and len(kept) >= rows:
            _kept.buffer = None  # in use until released
            return kept
        return np.zeros((rows,) + self.acts.shape, self.acts.dtype)

    def release(self) -> None:
        """Zero what was written and keep the buffer for this thread's next call (small buffers only)."""
        if self.written is not None:
            self.buffer[self.written] = 0
            self.written = None
        if self.buffer.nbytes <= KEEP_BYTES:
            _kept.buffer = self.buffer

    def __call__(self, rows: slice) -> np.ndarray:
        if self.written is not None:
            self.buffer[self.written] = 0
            self.written = None
        if rows.stop - rows.start > len(self.buffer):
            self.buffer = np.zeros((rows.stop - rows.start,) + self.acts.shape, self.acts.dtype)
        pick = (self.k >= rows.start) & (self.k < rows.stop)
        k, r, c = self.k[pick] - rows.start, self.r[pick], self.c[pick]
        self.written = (k, slice(None), r, c)
        self.buffer[self.written] = (self.acts[:, r, c] * self.values[pick]).T
        return self.buffer[:rows.stop - rows.start]


@register
class ReciproCAM(MultiTargetMethod):
    """Map value at (i, j) = target score (softmax probability by default) of the layer masked to (i, j).

    Masks are A * M_ij with M_ij the 3x3 Gaussian kernel centred at (i, j) (or a one-hot "binary" mask);
    token tensors keep their class token. Costs h*w forwards of the tail only.
    """
    name = "recipro-cam"
    engine = "ort"
    summary = "score of the layer masked around each position, via the model's tail (h*w tail forwards)"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        mask: str = "gaussian"  # "gaussian" (3x3 kernel 1/4 centre, 1/8 edges, 1/16 corners) or "binary"
        softmax: bool = True    # score class targets by softmax probability, as the paper; False: raw target score

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        if not layer_shape or not all(isinstance(d, int) for d in layer_shape[1:]):
            return 1
        return 1 + layer_shape[1] * layer_shape[2]  # one forward of the tail per layer position

    def explain_many(self, context, batch, targets, layer=None) -> RawMaps:
        kind = choose(self.name, "mask", self.params.mask, ("gaussian", "binary"))
        raw, info, acts = layer_activations(context, batch, layer)
        _, _, h, w = acts.shape
        masks = position_masks(h, w, kind).astype(raw.dtype)[:, None]
        maps, extras = [], []
        for i, image_targets in enumerate(targets):
            image_targets = [replace(t, probability=True) if self.params.softmax and isinstance(t, ClassTarget)
                             else t for t in image_targets]

            if info.layout == "NCHW":
                make = SparseMasked(acts[i], masks[:, 0], context.runtime.batch_size)
            else:
                def make(rows: slice, i=i) -> np.ndarray:
                    masked = np.multiply(acts[i:i + 1], masks[rows])
                    return np.ascontiguousarray(from_channels_first_np(masked, info, like=raw[i:i + 1]))

            try:
                scores = tail_scores_many(context, batch, i, layer, image_targets, h * w, make,
                                          desc=f"recipro-cam {i + 1}/{len(targets)}")
            finally:
                if isinstance(make, SparseMasked):
                    make.release()
            maps.extend(s.reshape(h, w) for s in scores)
            extras.extend({"forwards": h * w} for _ in image_targets)
        return RawMaps(np.stack(maps), extras)
