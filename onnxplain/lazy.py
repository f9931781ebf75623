"""Fields of a frozen dataclass that may be given as a call to make on first read (then kept), not a value."""
from __future__ import annotations

from typing import Any, Callable


class Deferred:
    """`function(*args)`, to be called on first read of the field it is given to (picklable when they are)."""
    __slots__ = ("function", "args")

    def __init__(self, function: Callable[..., Any], *args: Any):
        self.function, self.args = function, args

    def __call__(self) -> Any:
        return self.function(*self.args)


class LazyField:
    """A dataclass field's descriptor: a value set as a Deferred is computed on first read and kept, so a
    derived array most callers never read (an original-size heatmap per class) costs neither time nor memory.

    It gives the field no default (the class access raises AttributeError, which dataclasses read as none),
    and a frozen dataclass still refuses assignment after __init__."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.slot = name, "_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            raise AttributeError(self.name)
        value = obj.__dict__[self.slot]
        if isinstance(value, Deferred):
            value = obj.__dict__[self.slot] = value()
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = value

    def computed(self, obj: Any) -> bool:
        """Whether `obj`'s value is there already (given, or read once)."""
        return not isinstance(obj.__dict__[self.slot], Deferred)
