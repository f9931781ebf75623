"""What one layer sees in one image: every channel's map as a labelled grid, with per-channel statistics."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import render
from ..writing import write_json
from ..images import ImageSource
from .common import SCHEMA_VERSION, as_maps, image_name

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass
class Activations:
    """One image's maps at one layer, as (C, h, w) whatever the tensor's layout, with per-channel stats."""
    layer: str
    image_name: str
    layout: str
    shape: tuple[int, ...]   # the tensor's own shape for this image
    maps: np.ndarray         # (C, h, w) float32
    stats: list[dict] = field(default_factory=list)

    def grid(self, tile_size: int = 64, colormap: str = "viridis", columns: int | None = None,
             shared: bool = False) -> np.ndarray:
        """Every channel's map labelled `channel:max`, each scaled to its own min-max, or (`shared`) all on
        the layer's one min-max with a colour bar of that range below, so tiles compare."""
        low, high = float(self.maps.min()), float(self.maps.max())
        scale = (lambda m: (m - low) / (high - low) if high > low else np.zeros_like(m)) if shared \
            else render.normalise
        tiles = [render.colorize(scale(m), colormap) for m in self.maps]
        labels = [f"{s['channel']}:{s['max']:.3g}" for s in self.stats]
        picture = render.grid(tiles, columns=columns, labels=labels, tile_size=tile_size)
        if not shared:
            return picture
        return np.concatenate([picture, render.colour_bar(picture.shape[1], low, high, colormap)])

    def as_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "image": self.image_name, "layer": self.layer,
                "layout": self.layout, "shape": list(self.shape), "channels": self.stats}

    def save(self, prefix: str | Path, tile_size: int = 64, colormap: str = "viridis",
             shared: bool = False) -> dict[str, str]:
        """Write `<prefix>.png` (the grid) and `<prefix>.json` (the statistics); returns the paths."""
        prefix = str(prefix)
        png = render.write_png(prefix + ".png", self.grid(tile_size, colormap, shared=shared))
        write_json(prefix + ".json", self.as_dict())
        return {"grid": str(png), "stats": prefix + ".json"}


def channel_stats(maps: np.ndarray) -> list[dict]:
    """Per channel of (C, h, w) maps: mean, max, min and the fraction of positions above zero."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    return [{"channel": c, "mean": float(row.mean()), "max": float(row.max()), "min": float(row.min()),
             "fraction_positive": float((row > 0).mean())} for c, row in enumerate(flat)]


def activations(explainer: "Explainer", image: ImageSource, layer: str | None = "auto",
                output: str | None = None) -> Activations:
    """Every channel of a spatial layer (a tensor name, `auto` or `last-conv`) for one image."""
    name = explainer.model.resolve_layer(layer, output)
    info = explainer.model.spatial_info(name)
    batch = explainer.prepare([image])
    value = explainer.run(batch.x, [name])[name]
    maps = as_maps(value, info)[0].astype(np.float32)
    return Activations(name, image_name(image, 0), info.layout, tuple(value.shape[1:]), maps, channel_stats(maps))
