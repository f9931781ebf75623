"""What keeps the audit's memory flat: an append-only JSONL log of its records (the report is built from it at
the end), thumbnails written as PNG files, and the audit's cost in forward passes worked out before it runs."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from .writing import dumps, make_dirs, write_bytes, write_text

if TYPE_CHECKING:
    from .audit import AuditOptions
    from .explainer import Explainer


class AuditLog:
    """`audit.log.jsonl` (one record per line, appended and flushed) and `thumbs/*.png` in the audit folder."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / "audit.log.jsonl"
        self.thumbs = self.out / "thumbs"
        make_dirs(self.thumbs)  # recorded by the open transaction: a refused audit leaves nothing
        write_text(self.path, "")
        for old in self.thumbs.glob("*.png"):
            old.unlink()
        self.count = 0
        self.errors = 0

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(dumps(record, what="the audit log") + "\n")
        self.count += 1
        self.errors += "error" in record

    def records(self) -> Iterator[dict]:
        """Every record so far, read back from the log."""
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)

    def put_thumb(self, key: str, png: bytes) -> None:
        write_bytes(self.thumbs / _file(key), png)

    def thumb_map(self) -> "ThumbFiles":
        return ThumbFiles(self.thumbs)


class ThumbFiles:
    """The mapping the HTML report reads (key -> base64 PNG), read from the thumbnail files on demand."""

    def __init__(self, folder: Path):
        self.folder = folder

    def get(self, key: str, default: Any = None) -> str | None:
        path = self.folder / _file(key)
        return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return (self.folder / _file(key)).is_file()


THUMB = 128  # pixels, long side of the thumbnails embedded in the report


def thumb_png(image) -> bytes:
    """A thumbnail (long side THUMB pixels) of an RGB uint8 image as PNG bytes."""
    import cv2
    from .render import encode_png
    h, w = image.shape[:2]
    scale = THUMB / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    thumb = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    return encode_png(thumb)


def marked_overlay(attribution, boxes):
    """The overlay with the ground-truth boxes (green) and the map's maximum (white ring) drawn in."""
    import cv2
    import numpy as np
    image = attribution.overlay().copy()
    if boxes:
        thick = max(1, round(max(image.shape[:2]) / 150))
        for x1, y1, x2, y2 in boxes:
            cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), (0, 255, 0), thick)
        heatmap = attribution.heatmap
        if heatmap.max() > heatmap.min():  # a constant map has no maximum to mark
            row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
            cv2.circle(image, (int(col), int(row)), 2 * thick + 1, (255, 255, 255), thick)
    return image


def _file(key: str) -> str:
    return key.replace("/", "__") + ".png"


# ---- cost ----------------------------------------------------------------------------------------
def method_cost(explainer: "Explainer", method: str, image, params: dict, layer: str | None) -> tuple[int, float]:
    """Forward passes (onnxruntime images, or torch passes) and seconds one image costs `method`, measured
    on one image: the unit every count of the audit's plan multiplies."""
    from . import methods as registry
    cls = registry.get(method)
    runtimes = lambda: [explainer.runtime] + [r for _, r in explainer._splits.values()]  # noqa: E731
    before = sum(r.forwards for r in runtimes())
    started = time.perf_counter()
    [attribution] = explainer.explain(image, method=method, target="predicted", layer=layer, **params)
    seconds = time.perf_counter() - started
    forwards = sum(r.forwards for r in runtimes()) - before
    if cls.engine == "torch" or forwards == 0:  # gradient methods: one forward+backward per sample
        p = attribution.params
        forwards = max(forwards, int(p.get("n", p.get("samples", p.get("steps", 1))) or 1))
    return forwards, seconds


def audit_cost(explainer: "Explainer", options: "AuditOptions", images: int, other: "Explainer | None",
               first_image, layer_for, skipped: Sequence[str] = ()) -> dict:
    """The audit's plan in forward passes per step and its seconds, from runs measured on the first image.

    Steps: each image's explanations, its deletion/insertion curves (2 (steps + 1) forwards per method), the
    second model's explanations (all but the `skipped` methods), and the sanity check (one explanation per
    sanity image per randomised model, for each method). Each model variant is timed once, on what it runs:
    the second model (often an int8 copy, slower or faster than the first) and a randomised twin, which every
    sanity step builds afresh (its build, session and first run count each time).
    """
    params = lambda m: options.params.get(m, {})  # noqa: E731
    per_method = {m: method_cost(explainer, m, first_image, params(m), layer_for(m)) for m in options.methods}
    batch = explainer.prepare(first_image)
    started = time.perf_counter()
    explainer.run(batch.x[[0] * 2 * (options.steps + 1)])
    curve_seconds = time.perf_counter() - started
    curves = 2 * (options.steps + 1)
    sanity_models = _sanity_models(explainer, options) if options.sanity else 0
    sanity_images = min(options.sanity_images, images) if options.sanity else 0
    compared = [m for m in options.methods if m not in skipped] if other is not None else []
    second = {m: _compare_seconds(explainer, other, m, first_image, params(m), layer_for(m)) for m in compared}
    twin = {m: _twin_seconds(explainer, m, first_image, params(m), layer_for(m))
            for m in options.methods} if sanity_models and sanity_images else {}
    steps = {
        "explain": {m: images * f for m, (f, _) in per_method.items()},
        "deletion_insertion": {m: images * curves for m in per_method},
        "compare": {m: images * per_method[m][0] for m in compared},
        "sanity": {m: sanity_models * sanity_images * f for m, (f, _) in per_method.items()}}
    units = {"explain": {m: s for m, (_, s) in per_method.items()},
             "deletion_insertion": {m: curve_seconds for m in per_method},
             "compare": second,
             "twin": twin}
    seconds = plan_seconds(units, images, sanity_models, sanity_images)
    total = sum(sum(step.values()) for step in steps.values())
    return {"images": images, "forwards": steps, "total_forwards": total, "sanity_models": sanity_models,
            "seconds_per_image": units["explain"], "seconds": seconds,
            "estimated_seconds": round(sum(sum(step.values()) for step in seconds.values()), 1)}


def plan_seconds(units: dict, images: int, sanity_models: int, sanity_images: int) -> dict:
    """Seconds per step and method: how often each step runs times its measured unit. `units` holds one
    image's seconds per method for `explain` (the first model), `deletion_insertion` (one image's curves) and
    `compare` (the second model), and for `twin` a randomised twin's build plus its first image."""
    explain = units["explain"]
    return {"explain": {m: images * s for m, s in explain.items()},
            "deletion_insertion": {m: images * s for m, s in units["deletion_insertion"].items()},
            "compare": {m: images * s for m, s in units["compare"].items()},
            # the original maps of the sanity images, then per twin: its build and first image, then the rest
            "sanity": {m: sanity_images * explain[m] + sanity_models * (s + (sanity_images - 1) * explain[m])
                       for m, s in units["twin"].items()}}


def _compare_seconds(explainer: "Explainer", other: "Explainer", method: str, image, params: dict,
                     layer: str | None) -> float:
    """One image's prediction and explanation on the second model, as image_drift runs them; timed on a second
    run, as the audit's images run (the first converts the model for gradient methods, once)."""
    from .metrics.drift import layer_in
    for _ in range(2):
        started = time.perf_counter()
        batch = other.prepare(image)
        other.predict(batch)
        other.explain(batch, method=method, target="predicted", layer=layer_in(other, layer), **params)
    return time.perf_counter() - started


def _twin_seconds(explainer: "Explainer", method: str, image, params: dict, layer: str | None) -> float:
    """A randomised twin built (every weight layer randomised, as the full cascade) and its first explanation."""
    from .metrics import weight_layers
    from .surgery import randomise
    names = [w for entry in weight_layers(explainer.model) for w in entry.weights]
    started = time.perf_counter()
    twin = explainer.twin(randomise(explainer.model.proto, names, seed=0))
    twin.explain(image, method=method, target="predicted",
                 layer=explainer.model.resolve_layer(layer) if layer is not None else None, **params)
    return time.perf_counter() - started


def _sanity_models(explainer: "Explainer", options: "AuditOptions") -> int:
    """How many randomised models the sanity check builds (cascade depths plus single layers)."""
    from .metrics import weight_layers
    from .metrics.sanity import spread_depths
    count = len(weight_layers(explainer.model))
    return len(spread_depths(count, options.sanity_steps)) * 2 if count else 0


def format_cost(cost: dict) -> str:
    """The plan as a few lines for the terminal, before the audit starts."""
    lines = [f"audit plan: {cost['images']} images, {cost['total_forwards']} forward passes, about "
             f"{cost['estimated_seconds']:.0f} s"]
    for step, counts in cost["forwards"].items():
        if counts:
            lines.append(f"  {step:<19} " + "  ".join(f"{m} {n}" for m, n in counts.items()))
    return "\n".join(lines)
