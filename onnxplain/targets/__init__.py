"""What to explain: functions of the model's outputs that give one score per image.

Every Target reads a dict of output arrays (numpy or torch, first axis = images or
perturbed copies) and returns a 1-D score, so the same target serves forward-only
and gradient methods alike. Targets that name places (boxes, regions) are given in
original-image pixels and bound to each image's model-input geometry when resolved.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import TargetError
from ..numeric import softmax
from .base import BoxLayout, Context, Outputs, Target, _like
from .sequence import sequence_target

@dataclass(frozen=True)
class ClassTarget(Target):
    """The score of one class: a logit (default) or its softmax probability."""
    index: int = 0
    name: str = ""
    probability: bool = False
    normalised: bool = False  # the output already holds probabilities (the graph ends in Softmax/Sigmoid)

    @property
    def label(self) -> str:
        return f"{self.index} {self.name}".strip()

    def score(self, outputs: Outputs):
        value = outputs[self.output]
        flat = value.reshape(len(value), -1)
        if self.probability and not self.normalised:
            flat = _softmax(flat)
        return flat[:, self.index]

    def describe(self) -> dict:
        return {**super().describe(), "index": self.index, "name": self.name, "probability": self.probability}


@dataclass(frozen=True)
class BoxTarget(Target):
    """A detector's score for one box: the class score at the row (anchor) that best matched the box."""
    row: int = 0
    index: int = 0
    layout: BoxLayout = field(default_factory=BoxLayout)
    box: tuple[float, ...] = ()

    @property
    def label(self) -> str:
        return f"box row {self.row} class {self.index}"

    def score(self, outputs: Outputs):
        rows = self.layout.rows(outputs[self.output])
        return self.layout.class_scores(rows[:, self.row])[:, self.index]

    def describe(self) -> dict:
        return {**super().describe(), "row": self.row, "index": self.index, "box": list(self.box)}


@dataclass(frozen=True)
class RegionTarget(Target):
    """Sum (or mean) of one channel of a dense output (N, C, H, W) over a pixel mask, e.g. a segment or text line."""
    channel: int = 0
    mask: np.ndarray = field(default_factory=lambda: np.ones((1, 1), bool), compare=False)
    reduce: str = "sum"

    @property
    def label(self) -> str:
        return f"region channel {self.channel} ({int(self.mask.sum())} px)"

    def score(self, outputs: Outputs):
        value = outputs[self.output][:, self.channel]
        weights = _like(self.mask.astype(np.float32), value)
        total = (value * weights).reshape(len(value), -1).sum(1)
        return total / float(self.mask.sum()) if self.reduce == "mean" else total

    def describe(self) -> dict:
        return {**super().describe(), "channel": self.channel, "pixels": int(self.mask.sum()), "reduce": self.reduce}


@dataclass(frozen=True)
class CallableTarget(Target):
    """Any function of the outputs dict that returns one score per row."""
    fn: Callable[[Outputs], Any] = None
    name: str = "callable"

    @property
    def label(self) -> str:
        return self.name

    def score(self, outputs: Outputs):
        return self.fn(outputs)


def _softmax(x):
    if isinstance(x, np.ndarray):
        return softmax(x, axis=1)
    return x.softmax(dim=1)


TargetSpec = Any  # "predicted" | int | "topK" | name | "box:..." | "region:..." | list per image | Target | callable


def target_count(spec: TargetSpec, classes: int | None) -> int:
    """How many targets one image gets from `spec`, as far as is known without a forward: topK gives K (at most
    `classes`), all gives `classes` (1 where unknown), a list its largest entry's count, anything else 1."""
    if isinstance(spec, (list, tuple)):
        return max((target_count(s, classes) for s in spec), default=1)
    text = spec.strip() if isinstance(spec, str) else ""
    if text == "all":
        return classes or 1
    match = re.fullmatch(r"top(\d+)", text)
    if match:
        return max(1, min(int(match.group(1)), classes or int(match.group(1))))
    return 1


def resolve(spec: TargetSpec, context: Context) -> list[list[Target]]:
    """Targets per image (top-k gives several) from a spec and the batch's outputs."""
    n = len(context.outputs[context.output])
    if isinstance(spec, (list, tuple)) and len(spec) == n and not isinstance(spec, str):
        return [resolve_one(s, context, i) for i, s in enumerate(spec)]
    return [resolve_one(spec, context, i) for i in range(n)]


def resolve_one(spec: TargetSpec, context: Context, i: int) -> list[Target]:
    """The target(s) of image i."""
    output = context.output
    if isinstance(spec, Target):
        return [spec]
    if callable(spec):
        return [CallableTarget(output, fn=spec, name=getattr(spec, "__name__", "callable"))]
    text = "predicted" if spec is None else str(spec).strip()
    if text.startswith("box:"):
        return [box_target(text[4:], context, i)]
    if text.startswith("region:"):
        return [region_target(text[7:], context, i)]
    if text.startswith("char:") or (text == "predicted" and context.kind == "sequence"):
        return [sequence_target(text, context, i)]
    if text == "predicted" and context.kind in ("detection rows", "detection scores"):
        return [box_target("#0", context, i)]
    if text == "predicted" and context.kind == "dense map":
        return [predicted_region(context, i)]
    from ..task import FITTING
    if context.kind in FITTING:
        raise TargetError(f"Output '{context.output}' holds {context.kind}, not class scores, so target '{text}' "
                          f"does not fit; use {FITTING[context.kind]}.")
    return class_targets(text, context, i)


def class_targets(text: str, context: Context, i: int) -> list[ClassTarget]:
    """predicted | top1 | topK | all | INDEX | class name, on a classification output."""
    value = context.outputs[context.output]
    row = value[i].reshape(-1)
    classes = row.shape[0]
    labels = context.labels

    def make(index: int) -> ClassTarget:
        if not 0 <= index < classes:
            raise TargetError(f"Target class {index} is out of range: output '{context.output}' has {classes} "
                              f"classes (0..{classes - 1}).")
        name = labels[index] if labels and index < len(labels) else ""
        return ClassTarget(context.output, index=int(index), name=name, probability=context.probability,
                           normalised=context.normalised)

    if text in ("predicted", "top1"):
        return [make(int(np.argmax(row)))]
    if text == "all":  # every class, in index order
        return [make(j) for j in range(classes)]
    if re.fullmatch(r"-?\d+", text):
        return [make(int(text))]
    match = re.fullmatch(r"top(\d+)", text)
    if match:
        k = int(match.group(1))
        if k < 1:
            raise TargetError(f"Target '{text}' asks for no class; use top1 to top{classes} (or predicted).")
        if k > classes:
            raise TargetError(f"'{text}' asks for more classes than output '{context.output}' has ({classes}).")
        return [make(int(j)) for j in np.argsort(-row)[:k]]
    if labels and text in labels:
        return [make(list(labels).index(text))]
    raise TargetError(f"Cannot read target '{text}'; use predicted, a class index, topK, all, a class name, "
                      "box:x1,y1,x2,y2[:class] or region:x1,y1,x2,y2[:channel].")


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise TargetError(f"Cannot read {what} '{text}'; write four numbers x1,y1,x2,y2 in image pixels.") from None


def box_target(text: str, context: Context, i: int) -> BoxTarget:
    """box:x1,y1,x2,y2[:class] (original pixels) or box:#K (the K-th most confident predicted box)."""
    layout = context.box_layout
    value = context.outputs[context.output]
    if value.ndim != 3:
        raise TargetError(f"Output '{context.output}' has shape {list(value.shape)}, not detection rows "
                          "(N, boxes, values); choose the detector's raw output with --output.")
    rows = layout.rows(value)[i]
    scores = layout.class_scores(rows)
    if layout.boxes_output:
        ssd = ssd_boxes(context.outputs[layout.boxes_output][i], layout, context.input_hw)
        boxes_of = lambda r: ssd[r]  # noqa: E731
    else:
        boxes_of = lambda r: layout.boxes_xyxy(rows[r], context.input_hw)  # noqa: E731
    if scores.shape[-1] < 1:
        raise TargetError(f"Output '{context.output}' rows have no class scores after the box columns.")
    spec, _, cls = text.partition(":")
    if spec.startswith("#"):
        rank = int(spec[1:])
        row = int(np.argsort(-scores.max(axis=1))[rank])
        box = tuple(boxes_of(slice(row, row + 1))[0])
    else:
        coords = _numbers(spec, "box")
        if len(coords) != 4:
            raise TargetError(f"Box '{spec}' needs four numbers x1,y1,x2,y2.")
        box = context.pixel_maps[i].box_to_input(coords) if context.pixel_maps else tuple(coords)
        ious = _iou(np.asarray(box), np.asarray(boxes_of(slice(None)), np.float64))
        row = int(np.argmax(ious))
        if ious[row] <= 0:
            raise TargetError(f"No detection row overlaps box {spec}; check the box and the output layout.")
    index = int(cls) if cls else int(np.argmax(scores[row]))
    if not 0 <= index < scores.shape[-1]:
        raise TargetError(f"Box class {index} is out of range: the detector has {scores.shape[-1]} classes.")
    return BoxTarget(context.output, row=row, index=index, layout=layout, box=tuple(float(b) for b in box))


def ssd_boxes(boxes, layout: BoxLayout, input_hw: tuple[int, int]) -> np.ndarray:
    """One image's SSD-style boxes (A, 4, x1 y1 x2 y2) in model-input pixels; boxes whose values all lie in
    [0, 1] are normalised (as most SSD exports write them) and are scaled to the input size."""
    boxes = np.asarray(boxes, np.float64)
    if layout.normalised or (boxes.size and boxes.min() >= 0.0 and boxes.max() <= 1.0):
        boxes = boxes * np.array([input_hw[1], input_hw[0], input_hw[1], input_hw[0]], np.float64)
    return boxes


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def region_target(text: str, context: Context, i: int) -> RegionTarget:
    """region:x1,y1,x2,y2[:channel] in original pixels, on a dense output (N, C, H, W)."""
    value = context.outputs[context.output]
    if value.ndim != 4:
        raise TargetError(f"Output '{context.output}' has shape {list(value.shape)}, not a dense map "
                          "(N, C, H, W); choose a map output with --output.")
    spec, _, channel = text.partition(":")
    coords = _numbers(spec, "region")
    if len(coords) != 4:
        raise TargetError(f"Region '{spec}' needs four numbers x1,y1,x2,y2.")
    box = context.pixel_maps[i].box_to_input(coords) if context.pixel_maps else tuple(coords)
    return region_from_box(context.output, value.shape, box, context.input_hw, int(channel) if channel else None)


def predicted_region(context: Context, i: int) -> RegionTarget:
    """The pixels a dense output marks (last channel above 0.5 for probabilities, 0 for logits), or its peak."""
    value = np.asarray(context.outputs[context.output][i])
    channel = value.shape[0] - 1
    plane = value[channel]
    mask = plane > (0.5 if context.normalised else 0.0)
    if not mask.any():
        mask = plane >= plane.max()
    return RegionTarget(context.output, channel=channel, mask=mask)


def region_from_box(output: str, shape: Sequence[int], box: Sequence[float], input_hw: tuple[int, int],
                    channel: int | None = None, reduce: str = "sum") -> RegionTarget:
    """A region target from a box in model-input pixels, scaled to the output map's resolution."""
    channels, h, w = shape[1], shape[2], shape[3]
    channel = channels - 1 if channel is None else channel  # the last channel: foreground / text / face
    if not 0 <= channel < channels:
        raise TargetError(f"Channel {channel} is out of range: output '{output}' has {channels} channels.")
    sy, sx = h / (input_hw[0] or h), w / (input_hw[1] or w)
    x1, y1 = int(np.floor(box[0] * sx)), int(np.floor(box[1] * sy))
    x2, y2 = int(np.ceil(box[2] * sx)), int(np.ceil(box[3] * sy))
    mask = np.zeros((h, w), bool)
    mask[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)] = True
    if not mask.any():
        raise TargetError(f"Region {list(box)} lies outside the output map ({w}x{h} after scaling).")
    return RegionTarget(output, channel=channel, mask=mask, reduce=reduce)


def region_from_mask(output: str, mask: np.ndarray, channel: int, reduce: str = "sum") -> RegionTarget:
    """A region target from a boolean mask at the output map's resolution."""
    return RegionTarget(output, channel=channel, mask=np.asarray(mask, bool), reduce=reduce)

