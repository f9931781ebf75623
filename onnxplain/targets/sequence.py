"""Text recognisers (CTC): greedy decoding with the model's dictionary, and targets on the decoded text.

Outputs are (N, T, C): per time step, a score per dictionary entry, the CTC blank at index 0
(PaddleOCR's convention). Greedy decoding takes the best class per step, merges repeats and drops blanks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import TargetError
from .base import Context, Outputs, Target


def greedy_decode(scores: np.ndarray, dictionary: Sequence[str] | None, blank: int = 0
                  ) -> tuple[str, list[tuple[int, int]]]:
    """(text, [(time step, class index) per decoded character]) of one image's (T, C) scores."""
    best = np.asarray(scores).reshape(-1, np.asarray(scores).shape[-1]).argmax(axis=1)
    steps, previous = [], blank
    for t, index in enumerate(best):
        if index != blank and index != previous:
            steps.append((t, int(index)))
        previous = index
    return "".join(character(dictionary, c) for _, c in steps), steps


def character(dictionary: Sequence[str] | None, index: int) -> str:
    """The dictionary entry of a class, or <index> when the dictionary is unknown or too short."""
    return dictionary[index] if dictionary and index < len(dictionary) else f"<{index}>"


@dataclass(frozen=True)
class CharTarget(Target):
    """The score of one decoded character: class `index` at time step `step` of a (N, T, C) output."""
    step: int = 0
    index: int = 0
    position: int = 0
    char: str = ""

    @property
    def label(self) -> str:
        return f"char {self.position} '{self.char}' (step {self.step})"

    def score(self, outputs: Outputs):
        value = outputs[self.output]
        return value.reshape(len(value), -1, value.shape[-1])[:, self.step, self.index]

    def describe(self) -> dict:
        return {**super().describe(), "position": self.position, "char": self.char, "step": self.step,
                "index": self.index}


@dataclass(frozen=True)
class TextTarget(Target):
    """The decoded text's score: the sum of its characters' scores at their time steps."""
    steps: tuple[tuple[int, int], ...] = ()
    text: str = ""

    @property
    def label(self) -> str:
        return f"text '{self.text}'"

    def score(self, outputs: Outputs):
        value = outputs[self.output]
        value = value.reshape(len(value), -1, value.shape[-1])
        total = value[:, 0, 0] * 0
        for t, c in self.steps:
            total = total + value[:, t, c]
        return total

    def describe(self) -> dict:
        return {**super().describe(), "text": self.text, "steps": [list(s) for s in self.steps]}


def sequence_target(text: str, context: Context, i: int) -> Target:
    """predicted (the decoded text) or char:K (the K-th decoded character, from 0) of image i."""
    value = np.asarray(context.outputs[context.output])
    if value.ndim != 3:
        raise TargetError(f"Output '{context.output}' has shape {list(value.shape)}, not per-step scores "
                          "(N, T, C); char:K fits a text recogniser's output.")
    decoded, steps = greedy_decode(value[i], context.dictionary)
    if text == "predicted":
        if not steps:
            raise TargetError(f"Output '{context.output}' decodes to no text for image {i}; nothing to explain.")
        return TextTarget(context.output, steps=tuple(steps), text=decoded)
    match = re.fullmatch(r"char:(-?\d+)", text)
    if not match:
        raise TargetError(f"Cannot read target '{text}'; write char:K with K a whole number.")
    k = int(match.group(1))
    if not 0 <= k < len(steps):
        raise TargetError(f"Target char:{k} is out of range: image {i} decodes to '{decoded}' ({len(steps)} "
                          f"characters), so K is 0..{len(steps) - 1}." if steps else
                          f"Target char:{k} is out of range: image {i} decodes to no text.")
    t, c = steps[k]
    return CharTarget(context.output, step=t, index=c, position=k, char=character(context.dictionary, c))
