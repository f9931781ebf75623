"""Dead filters: channels of spatial layers that never activate over a folder of images.

A channel is dead when its maximum over every image and position stays at or below a
threshold. That is meaningful after ReLU-like ops (Relu, Clip with min >= 0), where such
a channel passes nothing on; many dead ReLU filters are a known symptom of a too-high
learning rate. Layers are marked with the ReLU-like op they come from, if any.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..images import ImageSource
from ..graph import relu_source
from .common import SCHEMA_VERSION, as_maps, chunk_size, chunks, list_images

if TYPE_CHECKING:
    from ..explainer import Explainer

LEARNING_RATE_NOTE = ("a high fraction of dead ReLU filters is a known symptom of a too-high learning rate "
                      "(or of a bad initialisation); such channels pass nothing on and get no gradient")


@dataclass
class LayerDead:
    """One layer's dead channels and every channel's peak activation."""
    layer: str
    op: str
    relu: str | None      # the ReLU-like op the layer comes from, or None
    peaks: np.ndarray     # (C,) max over images and positions
    dead: list[int]

    @property
    def channels(self) -> int:
        return len(self.peaks)

    @property
    def fraction(self) -> float:
        return len(self.dead) / max(1, self.channels)

    def as_dict(self) -> dict:
        return {"layer": self.layer, "op": self.op, "post_relu": self.relu is not None, "relu_op": self.relu,
                "channels": self.channels, "dead": self.dead, "fraction": self.fraction,
                "peaks": [float(p) for p in self.peaks]}


@dataclass
class DeadReport:
    """Dead channels per layer over `images` images, and which post-ReLU layers exceed `warn_fraction`."""
    layers: list[LayerDead]
    images: int
    threshold: float
    warn_fraction: float

    @property
    def flagged(self) -> list[LayerDead]:
        """Post-ReLU layers whose dead fraction exceeds warn_fraction."""
        return [entry for entry in self.layers if entry.relu and entry.fraction > self.warn_fraction]

    def as_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "images": self.images, "threshold": self.threshold,
                "warn_fraction": self.warn_fraction, "flagged": [e.layer for e in self.flagged],
                "note": LEARNING_RATE_NOTE if self.flagged else "", "layers": [e.as_dict() for e in self.layers]}

    def text(self) -> str:
        """A table, one row per layer, and what the numbers mean."""
        width = max([len(e.layer) for e in self.layers] + [5])
        lines = [f"{self.images} images, dead = max activation <= {self.threshold:g}", "",
                 f"{'layer':<{width}}  {'op':<18} {'post-ReLU':<10} {'dead':>11}  {'fraction':>8}  channels"]
        for e in self.layers:
            listed = ", ".join(str(c) for c in e.dead[:8]) + (", ..." if len(e.dead) > 8 else "")
            lines.append(f"{e.layer:<{width}}  {e.op:<18} {e.relu or '-':<10} {len(e.dead):>4} / {e.channels:<4}  "
                         f"{e.fraction:>8.1%}  {listed}")
        lines.append("")
        if self.flagged:
            lines.append(f"warning: {len(self.flagged)} post-ReLU layer(s) have more than {self.warn_fraction:.0%} "
                         f"dead channels: {LEARNING_RATE_NOTE}.")
        else:
            lines.append(f"No post-ReLU layer has more than {self.warn_fraction:.0%} dead channels.")
        if self.images < 100:
            lines.append(f"With {self.images} images, channels that fire only on rare content can look dead; "
                         "use a few hundred varied images before drawing conclusions.")
        if any(e.relu is None for e in self.layers):
            lines.append("Layers not marked post-ReLU can go negative: 'dead' there only means never above the "
                         "threshold.")
        return "\n".join(lines)


def dead_filters(explainer: "Explainer", images: str | Sequence[ImageSource], layers: Sequence[str] | None = None,
                 threshold: float = 1e-6, warn_fraction: float = 0.1) -> DeadReport:
    """Channels whose maximum over every image and position is <= threshold, per spatial layer.

    `layers` are tensor names (or `auto`/`last-conv`); None takes every spatial layer.
    """
    model = explainer.model
    names = [model.resolve_layer(n) for n in layers] if layers else [t.name for t in model.spatial_layers]
    infos = [model.spatial_info(n) for n in dict.fromkeys(names)]
    sources = list_images(images)
    peaks = {info.name: None for info in infos}
    size = chunk_size(explainer, infos)
    for _, batch in chunks(explainer, sources, "dead filters", size):
        values = explainer.run(batch.x, list(peaks))
        for info in infos:
            top = as_maps(values[info.name], info).max(axis=(0, 2, 3))
            peaks[info.name] = top if peaks[info.name] is None else np.maximum(peaks[info.name], top)
    entries = [LayerDead(info.name, info.op_type, relu_source(model, info.name), peaks[info.name].astype(np.float32),
                         [int(c) for c in np.flatnonzero(peaks[info.name] <= threshold)]) for info in infos]
    return DeadReport(entries, len(sources), threshold, warn_fraction)
