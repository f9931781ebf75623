"""The base of every target (a score read from the model's outputs), the detector row layout and the
context a target is resolved in; the target kinds live beside it in this package."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np


Outputs = Mapping[str, Any]


def _like(array: np.ndarray, reference):
    """`array` as the same kind (numpy or torch, device, dtype) as `reference`."""
    if isinstance(reference, np.ndarray):
        return array.astype(reference.dtype, copy=False)
    import torch
    return torch.as_tensor(array, device=reference.device, dtype=reference.dtype)


@dataclass(frozen=True)
class Target(abc.ABC):
    """Base: a named score read from the outputs."""
    output: str

    @property
    def label(self) -> str:
        return self.output

    @abc.abstractmethod
    def score(self, outputs: Outputs):
        """One score per row of the outputs (numpy in, numpy out; torch in, torch out)."""

    def describe(self) -> dict:
        return {"kind": type(self).__name__, "output": self.output, "label": self.label}


@dataclass(frozen=True)
class BoxLayout:
    """How a detector's raw output lays out its rows: YOLO-style (cx, cy, w, h, [objectness], class scores...).

    axis: "rows" for (N, boxes, values) or "columns" for (N, values, boxes) (YOLOv8 writes (1, 84, 8400)).
    box_format: "cxcywh" or "xyxy", in model-input pixels (or normalised to [0, 1] when `normalised`).
    objectness: whether a confidence column precedes the class scores (YOLOv5).
    """
    axis: str = "rows"
    box_format: str = "cxcywh"
    objectness: bool = False
    normalised: bool = False
    boxes_output: str | None = None  # SSD-style: boxes (N, A, 4) in this output, class scores in the explained one

    def rows(self, value):
        """(N, boxes, values) whatever the axis order."""
        rows = value if self.axis == "rows" else value.transpose(1, 2) if not isinstance(value, np.ndarray) \
            else value.transpose(0, 2, 1)
        return rows

    def boxes_xyxy(self, rows: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
        """Boxes of one image's rows as x1, y1, x2, y2 in model-input pixels."""
        b = rows[:, :4].astype(np.float64)
        if self.box_format == "cxcywh":
            b = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
        if self.normalised:
            b = b * np.array([input_hw[1], input_hw[0], input_hw[1], input_hw[0]])
        return b

    def class_scores(self, rows):
        if self.boxes_output:
            return rows
        start = 5 if self.objectness else 4
        scores = rows[..., start:]
        return scores * rows[..., 4:5] if self.objectness else scores


@dataclass(frozen=True)
class Context:
    """What resolving a target may need about the batch: outputs, geometry, labels."""
    outputs: Mapping[str, np.ndarray]
    output: str
    labels: Sequence[str] | None = None
    probability: bool = False
    pixel_maps: Sequence[Any] = ()       # images.PixelMap per image (original -> model input)
    input_hw: tuple[int, int] = (0, 0)
    box_layout: BoxLayout = field(default_factory=BoxLayout)
    kind: str = ""                   # the output's kind (task.OutputInfo.kind); "" when not known
    normalised: bool = False         # the output already holds probabilities
    dictionary: Sequence[str] | None = None  # a text recogniser's classes (CTC blank at 0)
