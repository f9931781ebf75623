"""The pointing game (Zhang et al., 2016): the map's maximum lies within `tolerance` pixels of a box."""
from __future__ import annotations

from typing import Sequence

import numpy as np

POINTING_TOLERANCE = 15    # pixels, as in Zhang et al.'s pointing game


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Sequence[float]], tolerance: float = POINTING_TOLERANCE) -> bool:
    """True when the map's maximum lies within `tolerance` pixels of any (x1, y1, x2, y2) box.

    The map and boxes are in the same pixels (the original image's: use `Attribution.heatmap`); a
    constant map has no maximum and counts as a miss.
    """
    heatmap = np.nan_to_num(np.asarray(heatmap, np.float64))
    if heatmap.size == 0 or heatmap.max() == heatmap.min():
        return False
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    for x1, y1, x2, y2 in boxes:
        dx = max(x1 - col, 0.0, col - x2)
        dy = max(y1 - row, 0.0, row - y2)
        if np.hypot(dx, dy) <= tolerance:
            return True
    return False
