"""What a prediction is: the top classes (or a recogniser's text, a detector's best boxes, a dense map's peak)
of one image on one output, and the class names read from a labels file."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image on one output."""
    image_name: str
    output: str
    top: list[tuple[int, str, float, float]]  # (index, name, score, probability)
    text: str | None = None  # a text recogniser's greedy-decoded text

    def as_dict(self) -> dict:
        found = {"image": self.image_name, "output": self.output,
                 "top": [{"index": i, "name": n, "score": s, "probability": p} for i, n, s, p in self.top]}
        return found if self.text is None else {**found, "text": self.text}


def read_labels(source: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    """Class names from a text file (one per line) or a JSON list, or a list given directly."""
    if source is None:
        return None
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    if not isinstance(source, (str, os.PathLike)):
        raise UserError(f"Labels must be a file path or a list of names, not {type(source).__name__}.")
    path = Path(source)
    if not path.is_file():
        kind = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"Label file '{path}' {kind}; pass a text file with one class name per line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"Label file '{path}' is not UTF-8 text; save it as UTF-8 with one class name per line.") \
            from None
    if path.suffix == ".json":
        import json
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"Label file '{path}' is not valid JSON ({exc.msg} at line {exc.lineno}); write a JSON "
                            "list of names or a text file with one name per line.") from None
        if not isinstance(data, (list, dict)):
            raise UserError(f"Label file '{path}' must hold a JSON list (or object) of class names.")
        return [str(v) for v in (data.values() if isinstance(data, dict) else data)]
    return [line.strip() for line in text.splitlines() if line.strip()]



def structured_prediction(name: str, output: str, info, value: np.ndarray, top: int,
                          label: Callable[[int], str], dictionary: Sequence[str] | None) -> Prediction:
    """Decoded text (sequence), the best boxes' classes (detection) or the map's peak (dense map) of one image's
    output `value`; `info` is the task's OutputInfo, `label` names a class, `dictionary` a recogniser's characters."""
    if info.kind == "sequence":
        from .targets.sequence import greedy_decode
        text, steps = greedy_decode(value, dictionary)
        return Prediction(name, output, [(c, label(c) if not dictionary else dictionary[c], float(value[t, c]),
                                          float(value[t, c])) for t, c in steps[:top]], text=text)
    if info.kind == "dense map":
        peak = float(value[-1].max())
        return Prediction(name, output, [(int(value.shape[0] - 1), "", peak, peak)])
    scores = info.box_layout.class_scores(info.box_layout.rows(value[None])[0])
    best = scores.max(axis=1)
    rows = np.argsort(-best)[:top]
    return Prediction(name, output, [(int(scores[r].argmax()), label(int(scores[r].argmax())),
                                      float(best[r]), float(best[r])) for r in rows])
