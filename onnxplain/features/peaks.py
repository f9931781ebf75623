"""Where each filter peaks over a set of images, and how far its peak wanders (part-localisation stability).

`peaks` runs the model in onnxruntime (no torch) and returns `Peaks`: every filter's peak position per
image at one spatial layer, which filters fire, and each one's spread. Zhang, Wu & Zhu's interpretable
filters (onnxplain.interpretable) should spread less than ordinary ones; `onnxplain features peaks` runs it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..writing import write_json

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import ImageSource

SCHEMA_VERSION = 1


@dataclass
class Peaks:
    """Each filter's peak position in each image at one layer, and how far the peaks wander.

    A filter *fires* when its mean peak value over the images is at least `threshold` times the
    largest mean peak of the layer. Its *spread* is the mean distance of its peak positions (over the
    images where it is positive) from their mean, divided by the map side (sqrt(h w)); the layer's
    `mean_spread` averages the spreads of the firing filters.
    """
    layer: str
    names: list[str]
    hw: tuple[int, int]
    positions: np.ndarray   # (N, C, 2) int: (row, col) of each map's first maximum
    values: np.ndarray      # (N, C) float: the maxima
    threshold: float = 0.1
    spread: np.ndarray = field(init=False)   # (C,) float, nan for filters that do not fire
    fires: np.ndarray = field(init=False)    # (C,) bool

    def __post_init__(self) -> None:
        mean_peak = self.values.mean(axis=0)
        self.fires = mean_peak >= self.threshold * max(float(mean_peak.max()), 1e-12)
        self.spread = np.array([peak_spread(self.positions[:, c], self.values[:, c], self.hw) if fire else np.nan
                                for c, fire in enumerate(self.fires)])

    @property
    def mean_spread(self) -> float:
        """The mean spread over the firing filters (nan when none fires on two images)."""
        valid = self.spread[~np.isnan(self.spread)]
        return float(valid.mean()) if len(valid) else float("nan")

    def counts(self, channel: int) -> np.ndarray:
        """(h, w) number of images whose peak for `channel` lies at each position (positive peaks only)."""
        heat = np.zeros(self.hw, np.float32)
        active = self.values[:, channel] > 0
        np.add.at(heat, (self.positions[active, channel, 0], self.positions[active, channel, 1]), 1)
        return heat

    def grid(self, tile_size: int = 48, colormap: str = "hot") -> np.ndarray:
        """One tile per filter: the heat of its peak counts, labelled `filter:spread` (gray when it does not fire)."""
        from .. import render
        tiles, labels = [], []
        for c in range(self.values.shape[1]):
            tile = render.colorize(render.normalise(self.counts(c)), colormap)
            if not self.fires[c]:
                tile = (tile.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.4 + 90).astype(np.uint8)
            tiles.append(tile)
            labels.append(f"{c}:{self.spread[c]:.2f}" if not np.isnan(self.spread[c]) else f"{c}:-")
        return render.grid(tiles, labels=labels, tile_size=tile_size)

    def as_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "layer": self.layer, "map_size": list(self.hw),
                "threshold": self.threshold, "images": self.names, "mean_spread": _number(self.mean_spread),
                "firing_filters": int(self.fires.sum()),
                "filters": [{"filter": c, "fires": bool(self.fires[c]), "mean_peak": float(self.values[:, c].mean()),
                             "positive_images": int((self.values[:, c] > 0).sum()),
                             "spread": _number(self.spread[c]),
                             "peaks": self.positions[:, c].tolist()} for c in range(self.values.shape[1])]}

    def text(self) -> str:
        """The table `onnxplain features peaks` prints: one row per filter, then the mean spread."""
        lines = [f"{len(self.names)} images, layer {self.layer} ({self.hw[0]}x{self.hw[1]})",
                 f"{'filter':>6}  {'fires':>5}  {'mean peak':>10}  {'positive':>8}  {'spread':>7}"]
        for c in range(self.values.shape[1]):
            spread = "-" if np.isnan(self.spread[c]) else f"{self.spread[c]:.3f}"
            lines.append(f"{c:>6}  {'yes' if self.fires[c] else 'no':>5}  {self.values[:, c].mean():>10.4g}  "
                         f"{int((self.values[:, c] > 0).sum()):>8}  {spread:>7}")
        lines.append(f"mean spread over {int(self.fires.sum())} firing filters: {self.mean_spread:.4f}")
        return "\n".join(lines)

    def save(self, prefix: str | Path, tile_size: int = 48, colormap: str = "hot") -> dict[str, str]:
        """Write `<prefix>.png` (the grid of peak-count maps) and `<prefix>.json`; returns the paths."""
        from .. import render
        prefix = str(prefix)
        png = render.write_png(prefix + ".png", self.grid(tile_size, colormap))
        write_json(prefix + ".json", self.as_dict())
        return {"grid": str(png), "json": prefix + ".json"}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def peak_spread(positions: np.ndarray, values: np.ndarray, hw: tuple[int, int]) -> float:
    """Mean distance of the (row, col) peaks with a positive value from their mean, / sqrt(h w); nan under 2."""
    points = positions[values > 0].astype(np.float64)
    if len(points) < 2:
        return float("nan")
    return float(np.linalg.norm(points - points.mean(axis=0), axis=1).mean() / math.sqrt(hw[0] * hw[1]))


def peak_positions(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N, C, 2) row/col of each map's first maximum, (N, C) maxima) of maps (N, C, h, w)."""
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
    index = flat.argmax(axis=2)
    return np.stack(np.unravel_index(index, maps.shape[2:]), axis=-1), flat.max(axis=2)


def peaks(explainer: "Explainer", images: "str | Sequence[ImageSource]", layer: str | None = "auto",
          threshold: float = 0.1, output: str | None = None) -> Peaks:
    """Every filter's peak position at a spatial layer (a tensor name, `auto` or `last-conv`) over images."""
    from .common import FeatureError, as_maps, chunks, image_name, list_images
    if not 0 <= threshold <= 1:
        raise FeatureError(f"--threshold is a fraction of the strongest filter's mean peak; {threshold} is not "
                           "in [0, 1].")
    sources = list_images(images)
    name = explainer.model.resolve_layer(layer, output)
    info = explainer.model.spatial_info(name)
    positions, values = [], []
    for _, batch in chunks(explainer, sources, desc="peaks"):
        maps = as_maps(explainer.run(batch.x, [name])[name], info)
        where, value = peak_positions(maps)
        positions.append(where)
        values.append(value.astype(np.float32))
    hw = tuple(int(d) for d in maps.shape[2:])
    return Peaks(name, [image_name(s, i) for i, s in enumerate(sources)], hw, np.concatenate(positions),
                 np.concatenate(values), threshold)
