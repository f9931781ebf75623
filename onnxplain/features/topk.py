"""Top-k: the images of a folder that excite one channel most, and the patches its receptive field sees.

The folder is streamed in chunks and only the best k scores are kept; the k winners are
decoded again at the end to cut their patches. A patch is the exact receptive field of
the maximal position, in model-input pixels, mapped back onto the original image.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from .. import render
from ..writing import write_json
from ..images import ImageSource, PixelMap
from .common import SCHEMA_VERSION, FeatureError, as_maps, check_channel, chunks, image_name, list_images, thumbnail
from .projection import RULES, project_neuron
from .receptive import ReceptiveField, receptive_field

if TYPE_CHECKING:
    from ..explainer import Explainer

BOX_COLOUR = (255, 40, 40)


@dataclass
class Hit:
    """One of the top images: its score, the maximal position and the receptive field around it."""
    rank: int
    image_name: str
    score: float
    position: tuple[int, int]                 # (row, col) in the layer
    input_box: tuple[int, int, int, int]      # (top, left, bottom, right) in model-input pixels, exclusive
    original_box: tuple[int, int, int, int]   # the same region in the original image
    image: np.ndarray                         # the original RGB image
    patch: np.ndarray | None                  # the original cropped to original_box (None when empty)
    projections: dict[str, np.ndarray] = dataclass_field(default_factory=dict)  # rule -> (C, h, w) over input_box

    def as_dict(self) -> dict:
        return {"rank": self.rank, "image": self.image_name, "score": self.score, "position": list(self.position),
                "input_box": list(self.input_box), "original_box": list(self.original_box)}


@dataclass
class TopK:
    """The k images that activate a channel most, best first, with their receptive-field patches."""
    layer: str
    channel: int
    by: str
    field: ReceptiveField
    images: int
    hits: list[Hit]
    project: tuple[str, ...] = ()

    def projections_grid(self, tile_size: int = 96) -> np.ndarray:
        """One row per hit: its patch, then the neuron's projection under each rule (as colour gradients)."""
        tiles, labels = [], []
        for hit, label in zip(self.hits, self._labels()):
            tiles.append(thumbnail(hit.patch, tile_size))
            labels.append(label)
            for rule in self.project:
                tiles.append(thumbnail(render.colour_gradient(hit.projections[rule]), tile_size))
                labels.append(rule)
        return render.grid(tiles, columns=1 + len(self.project), labels=labels, tile_size=tile_size)

    def patches_grid(self, tile_size: int = 96) -> np.ndarray:
        """The patches, squared and labelled with score and file name."""
        return render.grid([thumbnail(h.patch, tile_size) for h in self.hits], labels=self._labels(),
                           tile_size=tile_size)

    def images_grid(self, tile_size: int = 128) -> np.ndarray:
        """The whole images with the patch drawn as a box."""
        tiles = []
        for hit in self.hits:
            image = np.ascontiguousarray(hit.image.copy())
            top, left, bottom, right = hit.original_box
            thickness = max(1, max(image.shape[:2]) // 150)
            cv2.rectangle(image, (left, top), (max(left, right - 1), max(top, bottom - 1)), BOX_COLOUR, thickness)
            tiles.append(thumbnail(image, tile_size))
        return render.grid(tiles, labels=self._labels(), tile_size=tile_size)

    def _labels(self) -> list[str]:
        return [f"{h.score:.3g} {Path(h.image_name).stem}" for h in self.hits]

    def as_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "layer": self.layer, "channel": self.channel, "by": self.by,
                "images": self.images, "receptive_field": self.field.as_dict(),
                "project": list(self.project), "hits": [h.as_dict() for h in self.hits]}

    def save(self, prefix: str | Path) -> dict[str, str]:
        """Write `<prefix>.images.png`, `<prefix>.patches.png`, with projections `<prefix>.projections.png`,
        and `<prefix>.json`; returns the paths."""
        prefix = str(prefix)
        files = {"images": str(render.write_png(prefix + ".images.png", self.images_grid())),
                 "patches": str(render.write_png(prefix + ".patches.png", self.patches_grid())),
                 "json": prefix + ".json"}
        if self.project:
            files["projections"] = str(render.write_png(prefix + ".projections.png", self.projections_grid()))
        write_json(files["json"], self.as_dict())
        return files


def to_original_box(pixel_map: PixelMap, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Original-image pixels overlapping a box of model-input pixels (pixel centres at integers)."""
    top, left, bottom, right = box
    inverse = cv2.invertAffineTransform(pixel_map.matrix.astype(np.float64))
    corners = np.array([[left - 0.5, right - 0.5], [top - 0.5, bottom - 0.5], [1.0, 1.0]])
    (x0, x1), (y0, y1) = np.sort(inverse @ corners, axis=1)
    height, width = pixel_map.original_hw
    spans = [(int(np.floor(a - 0.5)) + 1, int(np.ceil(b + 0.5))) for a, b in ((y0, y1), (x0, x1))]
    (top, bottom), (left, right) = [(min(max(lo, 0), limit), min(max(hi, 0), limit))
                                    for (lo, hi), limit in zip(spans, (height, width))]
    return top, left, bottom, right


def top_k(explainer: "Explainer", images: str | Sequence[ImageSource], layer: str | None, channel: int,
          k: int = 9, by: str = "max", skip_gates: bool = True, project: Sequence[str] = ()) -> TopK:
    """The k images (best first) whose `channel` of `layer` is highest, by its max or mean over positions.

    Patches are cut at the maximal position's receptive field; with skip_gates,
    squeeze-excitation gates do not turn that field into the whole image. Each rule in `project`
    (deconvnet, guided) also projects the maximal neuron to the input, cropped to that field.
    """
    if by not in ("max", "mean"):
        raise FeatureError(f"Unknown ranking '{by}'; use max or mean.")
    project = tuple(dict.fromkeys(project))
    for rule in project:
        if rule not in RULES:
            raise FeatureError(f"Unknown projection '{rule}'; use deconvnet or guided.")
    if k < 1:
        raise FeatureError(f"k must be at least 1 (got {k}).")
    model = explainer.model
    name = model.resolve_layer(layer)
    info = model.spatial_info(name)
    sources = list_images(images)
    best: list[tuple[float, int, int, int]] = []   # (score, image index, row, col)
    for start, batch in chunks(explainer, sources, f"top-{k}"):
        maps = as_maps(explainer.run(batch.x, [name])[name], info)
        check_channel(info, maps.shape[1], channel)
        plane = maps[:, channel].reshape(len(maps), -1)
        scores = plane.max(axis=1) if by == "max" else plane.mean(axis=1)
        rows, cols = np.unravel_index(plane.argmax(axis=1), maps.shape[2:])
        best.extend((float(s), start + i, int(r), int(c)) for i, (s, r, c) in enumerate(zip(scores, rows, cols)))
        best = sorted(best, key=lambda entry: (-entry[0], entry[1]))[:k]
    field = receptive_field(model, name, skip_gates)
    hits = []
    for rank, (score, index, row, col) in enumerate(best):
        prepared = explainer.prepare([sources[index]])
        input_box = field.box(row, col) if field.input_hw else field.cover(row, col, prepared.hw)
        original_box = to_original_box(prepared.pixel_maps[0], input_box)
        t, l, b, r = original_box
        original = prepared.originals[0]
        patch = original[t:b, l:r].copy() if b > t and r > l else None
        top, left, bottom, right = input_box
        projections = {rule: project_neuron(explainer, prepared.x, prepared.spec.layout, name, channel, (row, col),
                                            rule)[:, top:bottom, left:right] for rule in project}
        hits.append(Hit(rank, image_name(sources[index], index), score, (row, col), input_box, original_box,
                        original, patch, projections))
    return TopK(name, channel, by, field, len(sources), hits, project)
