"""op_type -> converter function, with the opset range each function handles.

A converter function takes the node's inputs positionally (None for a missing
optional input) and its attributes as keyword arguments, already turned into
Python values at build time. Attributes that later opsets turned into inputs keep
the same parameter name, so one function often serves both forms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OpSpec:
    """One registered function: handles `op_type` for model opsets since..until (inclusive)."""

    op_type: str
    since: int
    until: int | None
    fn: Callable


_OPS: dict[str, list[OpSpec]] = {}


def register(*op_types: str, since: int = 1, until: int | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` for each of `op_types` over the model opsets since..until."""
    def decorate(fn: Callable) -> Callable:
        for op_type in op_types:
            _OPS.setdefault(op_type, []).append(OpSpec(op_type, since, until, fn))
        return fn
    return decorate


def lookup(op_type: str, opset: int, domain: str = "") -> Callable | None:
    """The function for `op_type` at the model's `opset` of the default domain, or None."""
    if domain not in DEFAULT_DOMAINS:
        return None
    for spec in _OPS.get(op_type, ()):
        if spec.since <= opset and (spec.until is None or opset <= spec.until):
            return spec.fn
    return None


def supported_ops() -> dict[str, list[tuple[int, int | None]]]:
    """Every registered op type with the opset ranges it is handled for (for docs and `inspect`)."""
    load_ops()
    return {op: sorted((s.since, s.until) for s in specs) for op, specs in sorted(_OPS.items())}


def load_ops() -> None:
    """Import the op modules so their @register decorators run."""
    from . import ops  # noqa: F401
