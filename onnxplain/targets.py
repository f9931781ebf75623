"""What to explain: functions of the model's outputs that give one score per image.

Every Target reads a dict of output arrays (numpy or torch, first axis = images or
perturbed copies) and returns a 1-D score, so the same target serves forward-only
and gradient methods alike.
"""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import TargetError

Outputs = Mapping[str, Any]


@dataclass(frozen=True)
class Target(abc.ABC):
    """Base: a named score read from the outputs; subclasses define `score`."""
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
class ClassTarget(Target):
    """The score of one class: a logit (default) or its softmax probability."""
    index: int = 0
    name: str = ""
    probability: bool = False

    @property
    def label(self) -> str:
        return f"{self.index} {self.name}".strip()

    def score(self, outputs: Outputs):
        value = outputs[self.output]
        flat = value.reshape(len(value), -1)
        if self.probability:
            flat = _softmax(flat)
        return flat[:, self.index]

    def describe(self) -> dict:
        return {**super().describe(), "index": self.index, "name": self.name, "probability": self.probability}


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
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return x.softmax(dim=1)


TargetSpec = Any  # "predicted" | int | "topK" | "INDEX" | list per image | Target | callable


def resolve(spec: TargetSpec, scores: np.ndarray, output: str, labels: Sequence[str] | None = None,
            probability: bool = False) -> list[list[Target]]:
    """Targets per image (top-k gives several) from a spec and the model's scores for the batch."""
    n = len(scores)
    flat = scores.reshape(n, -1)
    classes = flat.shape[1]
    if isinstance(spec, (list, tuple)) and len(spec) == n and not isinstance(spec, str):
        return [resolve(s, scores[i:i + 1], output, labels, probability)[0] for i, s in enumerate(spec)]
    if isinstance(spec, Target):
        return [[spec] for _ in range(n)]
    if callable(spec):
        return [[CallableTarget(output, fn=spec, name=getattr(spec, "__name__", "callable"))] for _ in range(n)]

    def make(index: int) -> ClassTarget:
        if not 0 <= index < classes:
            raise TargetError(f"Target class {index} is out of range: output '{output}' has {classes} classes "
                              f"(0..{classes - 1}).")
        name = labels[index] if labels and index < len(labels) else ""
        return ClassTarget(output, index=int(index), name=name, probability=probability)

    if spec in (None, "predicted", "top1"):
        return [[make(int(np.argmax(row)))] for row in flat]
    if isinstance(spec, (int, np.integer)):
        return [[make(int(spec))] for _ in range(n)]
    text = str(spec).strip()
    if re.fullmatch(r"-?\d+", text):
        return [[make(int(text))] for _ in range(n)]
    match = re.fullmatch(r"top(\d+)", text)
    if match:
        k = int(match.group(1))
        if not 1 <= k <= classes:
            raise TargetError(f"'{text}' asks for more classes than output '{output}' has ({classes}).")
        return [[make(int(i)) for i in np.argsort(-row)[:k]] for row in flat]
    if labels and text in labels:
        return [[make(labels.index(text))] for _ in range(n)]
    raise TargetError(f"Cannot read target '{text}'; use predicted, a class index, topK or a class name.")
