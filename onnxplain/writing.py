"""Writing output files: strict JSON, each file under a temporary name renamed into place, and a transaction
that removes what a failed (or interrupted) command wrote.

Every writer of onnxplain goes through `write_bytes` (PNG, .npy, JSON, HTML), so a disk that fills up mid-way
gives one sentence and leaves no truncated file; the CLI runs each command inside `transaction()`.
Only the standard library and errors.py are imported at module level.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

log = logging.getLogger(__name__)


class WriteError(UserError):
    """An output file or folder that cannot be written (a file in the way, no permission, disk full)."""


# ---- strict JSON ---------------------------------------------------------------------------------
def finite(value: Any, found: list | None = None) -> Any:
    """`value` with every NaN and infinity as None (JSON has neither); `found` collects how many there were."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if found is not None:
            found.append(value)
        return None
    if isinstance(value, dict):
        return {k: finite(v, found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, found) for v in value]
    return value


def dumps(data: Any, indent: int | None = None, what: str = "the JSON answer") -> str:
    """Strictly valid JSON text: NaN and infinity become null with a warning; other objects become text."""
    found: list = []
    text = json.dumps(finite(_plain(data), found), indent=indent, allow_nan=False, default=str)
    if found:
        log.warning("%d NaN or infinite value(s) in %s were written as null; the model or the method produced "
                    "non-finite numbers.", len(found), what)
    return text


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as Python numbers and lists, so `finite` sees every float."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and type(value).__module__ == "numpy":
        return value.tolist()
    return value


# ---- files ---------------------------------------------------------------------------------------
_written: list[list[Path]] = []   # the open transactions' files, innermost last


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary name beside `path`, then rename it into place; WriteError on failure."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    created = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except BaseException as exc:  # disk full, no permission, or an interrupt mid-write: no partial file stays
        with contextlib.suppress(OSError):
            temp.unlink()
        if not isinstance(exc, OSError):
            raise
        raise WriteError(f"Could not write '{path}' ({exc.strerror or exc}); free some space or choose another "
                         "output folder with --out.") from None
    if _written:
        _written[-1].extend(created + [path])
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """`data` as strictly valid JSON (NaN as null, with a warning)."""
    return write_bytes(path, dumps(data, indent, f"'{Path(path).name}'").encode("utf-8"))


def save_npy(path: str | os.PathLike, array: Any) -> Path:
    """An array as .npy, written whole or not at all."""
    import numpy as np
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return write_bytes(path, buffer.getvalue())


def make_dirs(folder: str | os.PathLike) -> Path:
    """Create a folder (and its parents), recorded by the open transaction so a failure removes it again."""
    folder = Path(folder)
    created = [p for p in reversed((folder, *folder.parents)) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"Could not create the folder '{folder}' ({exc.strerror or exc}); choose another "
                         "output folder with --out.") from None
    if _written:
        _written[-1].extend(created)
    return folder


def check_out(path: str | os.PathLike, option: str = "--out") -> Path:
    """The output folder, checked before any compute: not a file, and writable (it is created when missing)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"{option} '{folder}' is a file, not a folder; give a folder (it is created when missing).")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WriteError(f"{option} '{folder}' cannot be created: '{existing}' is a file; choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{option} '{folder}' cannot be written (no permission on '{existing}'); choose a folder "
                         "you can write to.")
    return folder


@contextlib.contextmanager
def transaction(rollback_on: tuple[type[BaseException], ...] = (BaseException,),
                keep: tuple[type[BaseException], ...] = ()) -> Iterator[list[Path]]:
    """Within the block every file written (and folder created for it) is recorded; when the block fails (an
    error, Ctrl-C, SIGTERM; `rollback_on` exceptions except those in `keep`), those files and folders are removed."""
    files: list[Path] = []
    _written.append(files)
    try:
        yield files
    except keep:
        raise
    except rollback_on:
        rollback(files)
        raise
    finally:
        _written.remove(files)


def rollback(written: list[Path]) -> None:
    """Remove the files written, then the folders created for them (innermost first, only when empty)."""
    for path in reversed(written):
        with contextlib.suppress(OSError):
            path.rmdir() if path.is_dir() else path.unlink()
