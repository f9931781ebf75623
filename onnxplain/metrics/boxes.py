"""Ground-truth boxes per image from a JSON file, looked up by relative path, file name or path."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import UserError

Box = tuple[float, float, float, float]


def load_boxes(path: str | os.PathLike) -> dict[str, list[Box]]:
    """Boxes per image from JSON: {"image.jpg": [[x1, y1, x2, y2], ...]} in original pixels."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Boxes file '{path}' does not exist; pass a JSON file like {{\"a.jpg\": [[x1, y1, x2, y2]]}}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"Boxes file '{path}' is not valid JSON; write {{\"a.jpg\": [[x1, y1, x2, y2]]}}.") from None
    if not isinstance(data, dict):
        raise UserError(f"Boxes file '{path}' must hold an object mapping image names to lists of boxes.")
    boxes: dict[str, list[Box]] = {}
    for name, entries in data.items():
        if isinstance(entries, (list, tuple)) and len(entries) == 4 and all(_is_number(v) for v in entries):
            entries = [entries]  # one box given without the outer list
        ok = isinstance(entries, (list, tuple)) and all(
            isinstance(b, (list, tuple)) and len(b) == 4 and all(_is_number(v) for v in b) and b[0] <= b[2]
            and b[1] <= b[3] for b in entries)
        if not ok:
            raise UserError(f"Boxes for '{name}' in '{path}' are not a list of [x1, y1, x2, y2] with x1 <= x2 "
                            "and y1 <= y2.")
        boxes[str(name)] = [tuple(float(v) for v in b) for b in entries]
    return boxes


def boxes_for(boxes: dict[str, list[Box]], image: str | os.PathLike, root: str | os.PathLike | None = None
              ) -> list[Box] | None:
    """The boxes of one image, keyed by its path relative to `root`, its file name, or its path as given."""
    path = Path(image)
    keys = [path.as_posix(), path.name]
    if root is not None:
        try:
            keys.insert(0, path.resolve().relative_to(Path(root).resolve()).as_posix())
        except ValueError:
            pass
    return next((boxes[k] for k in keys if k in boxes), None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
