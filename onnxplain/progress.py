"""Progress bars that show on a terminal and stay quiet when piped or asked to."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str | None = None, quiet: bool = False, **kwargs) -> Iterable[T]:
    """Wrap `items` in a tqdm bar unless quiet or stderr is not a terminal (the CLI's --quiet is passed down
    as `quiet`, never a process-wide switch, so a later caller in the same process is not silenced)."""
    if quiet or not sys.stderr.isatty():
        return items
    return tqdm(items, desc=desc, leave=False, **kwargs)
