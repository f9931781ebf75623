"""One image's heatmaps for all its targets: each target's map resized to the model input and warped back onto
the original image, made on first read and warped four targets per cv2 call (they share the geometry)."""
from __future__ import annotations

import cv2
import numpy as np

from .images import PixelMap
from .lazy import Deferred

# cv2.warpAffine of a 1-, 3- or 4-channel float image gives each channel bit for bit what a 1-channel warp
# gives (2 or 5+ channels take a fixed-point path that differs by ~3e-3), and a 4-channel warp of a
# 451x300 photo costs about what one 1-channel warp does.
CHANNELS = 4


def warp_stack(maps: list[np.ndarray], pixel_map: PixelMap) -> list[np.ndarray]:
    """`pixel_map.to_original` of each (h, w) map, in one warp per four maps (each resized to the model input
    alone first: a multi-channel resize is not bit-equal to one resize per map)."""
    (h, w) = pixel_map.input_hw
    maps = [m if m.shape[:2] == (h, w) else cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            for m in maps]
    warped: list[np.ndarray] = []
    for start in range(0, len(maps), CHANNELS):
        chunk = maps[start:start + CHANNELS]
        if len(chunk) == 1:
            warped.append(pixel_map.to_original(chunk[0]))
            continue
        stack = np.zeros(chunk[0].shape[:2] + (CHANNELS,), np.float32)  # a 2-channel stack is padded to 4
        for c, m in enumerate(chunk):
            stack[:, :, c] = m
        out = pixel_map.to_original(stack)
        warped.extend(out[:, :, c] for c in range(len(chunk)))
    return warped


class ImageHeatmaps:
    """The upsampled (model-input size) and original-size heatmaps of one image's targets, each made on first
    read and kept: an original-size heatmap is made with the three next to it (one warp), an upsampled one
    alone (one resize). Values are those of a resize then `PixelMap.to_original` per target, outside the
    pixels the model saw set to 0. Concurrent first reads may compute a map twice (equal values)."""

    def __init__(self, hw: tuple[int, int], pixel_map: PixelMap, valid: np.ndarray | None = None):
        self.hw, self.pixel_map = hw, pixel_map
        self.valid = pixel_map.valid_original() if valid is None else valid
        self.raws: list[np.ndarray] = []
        self._upsampled: dict[int, np.ndarray] = {}
        self._heatmaps: dict[int, np.ndarray] = {}

    def add(self, raw: np.ndarray) -> tuple[Deferred, Deferred]:
        """Register one target's raw map; returns (upsampled, heatmap) to read later."""
        self.raws.append(raw)
        k = len(self.raws) - 1
        return Deferred(self.upsampled, k), Deferred(self.heatmap, k)

    def upsampled(self, k: int) -> np.ndarray:
        """Target k's map at model-input resolution (the raw map itself when it is at that size already)."""
        if k not in self._upsampled:
            raw, (h, w) = self.raws[k], self.hw
            self._upsampled[k] = raw if raw.shape == (h, w) else cv2.resize(raw, (w, h),
                                                                            interpolation=cv2.INTER_LINEAR)
        return self._upsampled[k]

    def heatmap(self, k: int) -> np.ndarray:
        """Target k's map at the original image's size, 0 where the model saw nothing."""
        if k not in self._heatmaps:
            start = k - k % CHANNELS
            todo = [j for j in range(start, min(start + CHANNELS, len(self.raws))) if j not in self._heatmaps]
            for j, warped in zip(todo, warp_stack([self.upsampled(j) for j in todo], self.pixel_map)):
                self._heatmaps[j] = np.where(self.valid, warped, 0).astype(np.float32, copy=False)
        return self._heatmaps[k]
