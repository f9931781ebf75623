"""What a batch job reads: a folder (recursive), a manifest (CSV, JSONL or Parquet) or a list of paths, as
Items named by their path relative to a root, so two `a.jpg` in different folders never collide."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
MANIFEST_SUFFIXES = {".csv", ".jsonl", ".parquet"}


@dataclass(frozen=True)
class Item:
    """One image of a job: where it is, its name in the outputs (a relative POSIX path), its own target."""
    path: str
    name: str
    target: Any = None


def list_inputs(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Item]:
    """Items of a folder (image files under it, sorted), a manifest file, one image, or a list of paths.

    Names are relative to the folder, to the manifest's folder, or (for a list) to the deepest folder
    the paths share. A list may hold folders and manifests too: each one's names are then prefixed by its
    folder relative to the folder all of them share (`cats/a.jpg`, `dogs/a.jpg`).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            return _folder(path)
        if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            return read_manifest(path)
        if path.is_file():
            return [Item(str(path), path.name)]
        raise UserError(f"Input '{path}' does not exist; pass a folder of images, a manifest "
                        "(.csv, .jsonl, .parquet with a 'path' column) or image files.")
    if any(Path(p).is_dir() or Path(p).suffix.lower() in MANIFEST_SUFFIXES for p in source):
        return _combined([Path(p) for p in source])
    return _named([(str(p), None) for p in source], None)


def _combined(sources: Sequence[Path]) -> list[Item]:
    """Items of several folders, manifests and files, named relative to the folder their roots share."""
    common = Path(os.path.commonpath([p.resolve() if p.is_dir() else p.resolve().parent for p in sources]))
    return _named([(i.path, i.target) for source in sources for i in list_inputs(source)], common)


def _folder(root: Path) -> list[Item]:
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"No images in '{root}' (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    return [Item(str(p), p.relative_to(root).as_posix()) for p in paths]


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """Items from a manifest: a `path` column (relative paths are taken from the manifest's folder) and an
    optional `target` column (a class index or name per row, empty for the job's target)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if any(not isinstance(r, dict) for r in rows):
            raise UserError(f"Manifest '{path}' has a line that is not a JSON object; write one "
                            '{"path": ..., "target": ...} per line.')
    else:
        rows = _table_rows(path, suffix)
    if not rows or any("path" not in r for r in rows):
        raise UserError(f"Manifest '{path}' has no 'path' column (or no rows); give one image path per row.")
    base = path.parent
    entries = [(str(p if Path(p).is_absolute() else base / p), _target(r.get("target")))
               for r in rows for p in [str(r["path"])]]
    return _named(entries, base)


def _table_rows(path: Path, suffix: str) -> list[dict]:
    if suffix == ".csv":
        import csv
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    import pyarrow.parquet as pq
    return pq.read_table(path).to_pylist()


def _target(value: Any) -> Any:
    """A manifest's target cell: None when empty, an int when it is a number, else the text (a class name)."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return None
    text = str(value).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _named(entries: Sequence[tuple[str, Any]], base: Path | None) -> list[Item]:
    """Items named relative to `base` (or the paths' common folder); a name given twice is refused."""
    if not entries:
        raise UserError("No images were given; pass a folder, a manifest or image files.")
    absolute = [Path(p).resolve() for p, _ in entries]
    root = Path(base).resolve() if base is not None else Path(os.path.commonpath([p.parent for p in absolute]))
    items = []
    for (path, target), full in zip(entries, absolute):
        try:
            name = full.relative_to(root).as_posix()
        except ValueError:  # outside the manifest's folder: keep the full path as the name
            name = full.as_posix().lstrip("/")
        items.append(Item(path, name, target))
    seen: dict[str, str] = {}
    for item in items:
        if item.name in seen and seen[item.name] != item.path:
            raise UserError(f"Two inputs have the name '{item.name}' ('{seen[item.name]}' and '{item.path}'); "
                            "give each image once.")
        seen[item.name] = item.path
    return list({item.name: item for item in items}.values())


def in_shard(name: str, shard: tuple[int, int] | None) -> bool:
    """Whether the item named `name` belongs to shard (i, n): a stable split by a hash of the name."""
    if shard is None:
        return True
    index, count = shard
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count == index


def check_shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """(i, n) from a tuple or an 'i/n' string, checked: 0 <= i < n."""
    if shard is None:
        return None
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise UserError(f"Shard '{shard}' is not I/N; write e.g. --shard 0/4 for the first of four.")
        shard = (int(parts[0]), int(parts[1]))
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise UserError(f"Shard {index}/{count} does not exist; use 0 <= I < N (e.g. 0/{max(count, 2)}).")
    return int(index), int(count)


def select(items: Iterable[Item], shard: tuple[int, int] | None) -> list[Item]:
    """The items of one shard, in input order."""
    return [item for item in items if in_shard(item.name, shard)]


def content_hash(data: bytes) -> str:
    """The hex digest that identifies an image's bytes in results and resume keys."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_bytes(path: str) -> bytes | None:
    """A file's bytes, or None where it cannot be read (the job then writes an error row)."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None
