"""Progress bars that show on a terminal and stay quiet when piped or asked to."""
from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
QUIET = False  # set by the CLI's --quiet


def progress(items: Iterable[T], desc: str | None = None, quiet: bool = False, **kwargs) -> Iterable[T]:
    """Wrap `items` in a tqdm bar unless quiet, globally quiet, or stderr is not a terminal."""
    if quiet or QUIET or not sys.stderr.isatty():
        return items
    return tqdm(items, desc=desc, leave=False, **kwargs)
