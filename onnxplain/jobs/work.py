"""The work of a batch job on one batch of images, shared by the in-process loop and the Ray actors: decode
each image on its own (a bad one is an error row), run the rest together, and return result rows and maps."""
from __future__ import annotations

import hashlib
import json
import re
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import UserError
from .inputs import Item, content_hash, read_bytes

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import Prepared

MAP_KINDS = ("input", "raw", "original")
TOP_SHARE = 0.1  # `mass`: the share of a map's positive mass within its top 10% of pixels


@dataclass(frozen=True)
class JobSpec:
    """What a job computes per image; its hash (with each image's content hash) is the resume key.

    `methods` may be empty (predictions only); `embed` names a layer whose pooled vector is stored per image;
    `maps` is the resolution of the stored maps: `input` (the model's input size), `raw` (the method's own)
    or `original` (the image's size; large), or None to store none.
    """
    model: str
    methods: tuple[str, ...] = ("grad-cam",)
    target: Any = "predicted"
    layer: str = "auto"
    output: str | None = None
    params: dict = field(default_factory=dict)   # method -> {parameter: value}
    top: int = 5
    maps: str | None = "input"
    embed: str | None = None
    overlays: bool = False
    preset: str | None = None
    labels: str | None = None
    device: str = "cpu"
    engine: str = "auto"
    batch_size: int = 16
    alpha: float = 0.5               # overlay opacity and colormap (rendering only: not in the resume key)
    colormap: str | None = None
    options: dict = field(default_factory=dict)  # other Explainer options: limits, input_size, resize, order, ...

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        if self.maps is not None and self.maps not in MAP_KINDS:
            raise UserError(f"maps='{self.maps}' is not one of {', '.join(MAP_KINDS)} (or None for no maps).")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be at least 1, not {self.batch_size}.")

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    def params_hash(self) -> str:
        """A digest of everything that changes a result (the model's bytes included, not where it lies)."""
        settings = {k: v for k, v in self.as_dict().items()
                    if k not in ("model", "device", "batch_size", "overlays", "alpha", "colormap")}
        settings["options"] = {k: v for k, v in self.options.items() if k not in LIMIT_OPTIONS}  # limits refuse,
        settings["model"] = _file_digest(self.model)                                           # never change

        return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


def _file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_explainer(spec: JobSpec, threads: int | None = None) -> "Explainer":
    """The Explainer a job runs on; `threads` sets onnxruntime's (and torch's) threads in this process."""
    from ..explainer import Explainer
    if threads:
        import torch
        torch.set_num_threads(threads)
    return Explainer(spec.model, preprocess=spec.preset, labels=spec.labels, device=spec.device,
                     batch_size=spec.batch_size, quiet=True, engine=spec.engine, threads=threads, **spec.options)


LIMIT_OPTIONS = ("max_pixels", "max_forwards", "max_output_side")


def target_tag(target: dict) -> str:
    """The part of keys and file names that names the target: a class index, or its label made file-safe."""
    if "index" in target and target.get("kind") == "ClassTarget":
        return str(target["index"])
    label = str(target.get("label", "target"))
    return re.sub(r"[^\w.-]+", "-", label, flags=re.ASCII).strip("-.") or "target"


def map_key(name: str, method: str, target: str) -> str:
    """The key of one map in the store: the image's relative path, the method and the target."""
    return f"{name}::{method}::{target}"


class Worker:
    """Runs a JobSpec on batches of items; one per process (it holds the Explainer's sessions)."""

    def __init__(self, spec: JobSpec, explainer: "Explainer", out: Path | None = None):
        self.spec, self.explainer, self.out = spec, explainer, out
        self.params_hash = spec.params_hash()

    def process(self, items: Sequence[Item], blobs: Sequence[bytes | None] | None = None
                ) -> tuple[list[dict], dict[str, np.ndarray]]:
        """Result rows (one per item, in order) and the maps keyed by `map_key`, for one batch of items."""
        blobs = list(blobs) if blobs is not None else [read_bytes(item.path) for item in items]
        rows = [self._row(item, blob) for item, blob in zip(items, blobs)]
        good, prepared = [], []
        for i, blob in enumerate(blobs):
            if rows[i]["error"] is None:
                try:
                    prepared.append(self.explainer.prepare(blob, files=[items[i].path]))
                    good.append(i)
                except UserError as exc:
                    rows[i]["error"] = str(exc)
        maps: dict[str, np.ndarray] = {}
        if good:
            started = time.perf_counter()
            try:
                self._explain([items[i] for i in good], [rows[i] for i in good], _concat(prepared), maps)
            except UserError as exc:  # one image's target (an unknown name, ...) is that batch's error
                if len(good) > 1:
                    return self._one_by_one(items, blobs)
                rows[good[0]]["error"] = str(exc)
            each = (time.perf_counter() - started) / len(good)
            for i in good:
                rows[i]["seconds"] = each
        return rows, maps

    def _one_by_one(self, items, blobs):
        rows, maps = [], {}
        for item, blob in zip(items, blobs):
            r, m = self.process([item], [blob])
            rows += r
            maps.update(m)
        return rows, maps

    def _row(self, item: Item, blob: bytes | None) -> dict:
        error = None if blob is not None else f"Image file '{item.path}' cannot be read."
        return {"path": item.name, "source": item.path, "hash": content_hash(blob) if blob is not None else "",
                "params_hash": self.params_hash, "target": None if item.target is None else str(item.target),
                "width": None, "height": None, "predictions": [], "text": None, "explanations": [], "error": error,
                "seconds": None}

    def _explain(self, items: Sequence[Item], rows: list[dict], batch: "Prepared", maps: dict) -> None:
        spec, explainer = self.spec, self.explainer
        for row, image, prediction in zip(rows, batch.originals, explainer.predict(batch, spec.top, spec.output)):
            row["height"], row["width"] = int(image.shape[0]), int(image.shape[1])
            row["predictions"] = [{"index": i, "name": n, "score": s, "probability": p} for i, n, s, p in prediction.top]
            row["text"] = prediction.text  # a text recogniser's decoded line (None for other models)
        if spec.embed is not None:
            self._embed(items, batch, maps)
        targets = [spec.target if item.target is None else item.target for item in items]
        for method in spec.methods:
            layer = spec.layer
            attributions = explainer.explain(batch, method=method, target=targets, layer=layer, output=spec.output,
                                             **spec.params.get(method, {}))
            names = {name: i for i, name in enumerate(batch.names)}
            for attribution in attributions:
                i = names[attribution.image_name]
                rows[i]["explanations"].append(self._summary(items[i].name, attribution, maps))

    def _embed(self, items: Sequence[Item], batch: "Prepared", maps: dict) -> None:
        from ..features.common import pooled
        model = self.explainer.model
        layer = model.resolve_layer(self.spec.embed, self.spec.output)
        values = self.explainer.forward(batch, [layer])[layer]
        for item, vector in zip(items, pooled(values, model.tensors[layer])):
            maps[map_key(item.name, "embed", layer)] = vector.astype(np.float32)

    def _summary(self, name: str, attribution, maps: dict) -> dict:
        """One method's result on one image: peak (original pixels), mass, a warning; its map goes to `maps`."""
        target = attribution.target
        tag = target_tag(target)
        key = map_key(name, attribution.method, tag)
        heatmap = attribution.heatmap
        warning = None
        if not np.isfinite(heatmap).all():
            warning = "the map has non-finite values (replaced by 0)"
            heatmap = np.nan_to_num(heatmap, nan=0.0, posinf=0.0, neginf=0.0)
        elif float(heatmap.max()) == float(heatmap.min()):
            warning = "the map is constant: the method found nothing for this target"
        warning = " ".join(attribution.warnings) or warning  # the method's and the map's own sentences first
        row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        stored = {"input": attribution.upsampled, "raw": attribution.raw, "original": heatmap}.get(self.spec.maps)
        if stored is not None:
            maps[key] = np.nan_to_num(stored).astype(np.float16)
        overlay = self._overlay(key, attribution) if self.spec.overlays and self.out is not None else None
        return {"method": attribution.method, "target": json.dumps(_plain(target), sort_keys=True),
                "target_index": target.get("index"), "layer": attribution.layer, "peak_x": int(col),
                "peak_y": int(row), "peak": float(heatmap[row, col]), "mass": _mass(heatmap), "warning": warning,
                "map_key": key if stored is not None else None, "overlay": overlay}

    def _overlay(self, key: str, attribution) -> str:
        """The per-image files of `Attribution.save` (overlay PNG, heatmap and raw .npy, pictures) under
        overlays/, named by the key; returns the overlay's path relative to the output folder."""
        relative = Path("overlays") / key.replace("::", ".")
        attribution.save(str(self.out / relative), self.spec.alpha, self.spec.colormap)
        return relative.as_posix() + ".png"


def _mass(heatmap: np.ndarray) -> float:
    """The share of the map's positive mass held by its top TOP_SHARE pixels (1: all of it in a few pixels)."""
    positive = np.clip(heatmap.astype(np.float64).ravel(), 0, None)
    total = positive.sum()
    if total <= 0:
        return 0.0
    k = max(1, int(round(TOP_SHARE * positive.size)))
    return float(np.partition(positive, positive.size - k)[-k:].sum() / total)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def _concat(batches: Sequence["Prepared"]) -> "Prepared":
    """One Prepared batch of single-image batches, named image0, image1, ... in order."""
    from ..images import Prepared
    first = batches[0]
    return Prepared(np.concatenate([b.x for b in batches]), [b.originals[0] for b in batches],
                    [b.pixel_maps[0] for b in batches], [f"image{i}" for i in range(len(batches))],
                    first.spec, first.preprocess)


def default_threads() -> int:
    """onnxruntime threads for one in-process job: every core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
