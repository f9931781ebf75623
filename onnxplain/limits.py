"""Bounds on what one call may cost: pixels per image, forward passes per explanation, output size, and a
cancel token that a deadline or a client that left trips between batches.

Only the standard library and errors.py are imported: the runtimes, the methods, the Explainer and the
server all use this module, so it sits at the lowest layer.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from .errors import ImageError, UserError

MAX_PIXELS = 50_000_000      # pixels (width x height) an image may have, read from its header before decoding
MAX_FORWARDS = 100_000       # forward (or forward+backward) passes one explanation of one image may cost
MAX_OUTPUT_SIDE = 4096       # longest side of heatmaps and overlays; larger originals are scaled down for them


class LimitError(UserError):
    """A request over one of the configured limits (pixels, forwards, input size)."""


class PixelLimitError(LimitError, ImageError):
    """An image over max_pixels: a limit (413 from the server) and an image that cannot be read (audit skips it)."""


class Cancelled(UserError):
    """Work stopped between batches: its deadline passed or whoever asked for it left."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Remedy:
    """How a limit refusal tells its reader to ask for less: the words after "fewer targets" and after "n or
    steps", and the words before a flag to raise. The CLI's words by default; the server names its request
    fields and its own flags ("the server's --max-pixels")."""
    targets: str = " (-t)"
    params: str = ""
    flags: str = ""

    def flag(self, name: str) -> str:
        """The flag `--name` as this reader raises it."""
        return f"{self.flags}--{name}"


CLI = Remedy()


@dataclass(frozen=True)
class Limits:
    """The bounds of one Explainer (each flag of the CLI and the server sets one)."""
    max_pixels: int = MAX_PIXELS
    max_forwards: int = MAX_FORWARDS
    max_output_side: int = MAX_OUTPUT_SIDE

    def __post_init__(self):
        for name in ("max_pixels", "max_forwards", "max_output_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"The limit '{name}' must be a whole number of at least 1, not {value!r}.")

    def check_pixels(self, width: int, height: int, label: str = "The image", remedy: Remedy = CLI) -> None:
        """Refuse an image whose header claims more than max_pixels, before anything is decoded; `remedy` words
        the flag to raise."""
        if width * height > self.max_pixels:
            raise PixelLimitError(f"{label} is {width}x{height} ({width * height / 1e6:.1f} megapixels), over the limit "
                                  f"of {self.max_pixels / 1e6:g} megapixels; scale it down or raise "
                                  f"{remedy.flag('max-pixels')}.")

    def check_forwards(self, method: str, forwards: int, targets: int = 1, remedy: Remedy = CLI) -> None:
        """Refuse an explanation whose estimated forward passes per image exceed max_forwards; `targets` is how
        many targets of one image the method runs one by one (its forwards are paid once per target); `remedy`
        words the sentence's advice for whoever asked (CLI flags or request fields)."""
        if targets > 1 and forwards * targets > self.max_forwards:
            raise LimitError(f"Method '{method}' runs once per target: {targets:,} targets of about {forwards:,} "
                             f"forward passes each need about {forwards * targets:,} per image, over the limit of "
                             f"{self.max_forwards:,}; ask for fewer targets{remedy.targets}, lower n or steps"
                             f"{remedy.params}, or raise {remedy.flag('max-forwards')}.")
        if forwards > self.max_forwards:
            raise LimitError(f"Method '{method}' with these parameters needs about {forwards:,} forward passes per "
                             f"image, over the limit of {self.max_forwards:,}; lower n, steps or the number of "
                             f"windows{remedy.params}, or raise {remedy.flag('max-forwards')}.")

# ---- cancellation --------------------------------------------------------------------------------
class CancelToken:
    """Says why work should stop: cancel() was called (a client left) or its deadline passed."""

    def __init__(self, timeout: float | None = None):
        self.deadline = time.monotonic() + timeout if timeout else None
        self.timeout = timeout
        self._reason: str | None = None

    def cancel(self, reason: str) -> None:
        self._reason = self._reason or reason

    @property
    def reason(self) -> str | None:
        if self._reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            self._reason = f"The request ran past the server's limit of {self.timeout:g} s; ask for less work."
        return self._reason

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class AllCancelled:
    """A token for work shared by several requests: it stops only when every one of them has stopped."""

    def __init__(self, tokens: Sequence[CancelToken]):
        self.tokens = list(tokens)

    @property
    def reason(self) -> str | None:
        reasons = [t.reason for t in self.tokens]
        return reasons[0] if reasons and all(reasons) else None


_local = threading.local()


@contextlib.contextmanager
def watching(token: CancelToken | AllCancelled | None) -> Iterator[None]:
    """Within the block, `checkpoint()` in this thread raises Cancelled once `token` says stop."""
    previous = getattr(_local, "token", None)
    _local.token = token
    try:
        yield
    finally:
        _local.token = previous


def checkpoint() -> None:
    """Raise Cancelled when the token this thread watches says stop (called between batches)."""
    token = getattr(_local, "token", None)
    if token is not None and token.reason is not None:
        raise Cancelled(token.reason)
