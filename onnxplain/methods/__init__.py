"""The method registry: name -> Method class. Each method module registers itself on import."""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil

from ..errors import MethodError
from .base import Method, RawMaps

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry under its name."""
    REGISTRY[cls.name] = cls
    return cls


_loaded = False


def _load_all() -> None:
    """Import every module of this package once: each registers its methods (later calls return at once: the
    package listing cost about 0.4 ms per explain call)."""
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base",):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def get(name: str) -> type[Method]:
    """The Method class for a name, or a clear error naming the nearest methods."""
    _load_all()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `onnxplain methods`"
        raise MethodError(f"Unknown method '{name}' ({hint}).")
    return REGISTRY[name]


def list_methods() -> list[dict]:
    """Every registered method with its engine, summary and parameters (name, default)."""
    _load_all()
    return [{"name": cls.name, "engine": cls.engine, "summary": cls.summary, "uses_layer": cls.uses_layer,
             "params": {f.name: getattr(cls.Params(), f.name) for f in dataclasses.fields(cls.Params)}}
            for cls in sorted(REGISTRY.values(), key=lambda c: (c.engine, c.name))]


__all__ = ["Method", "RawMaps", "register", "get", "list_methods", "REGISTRY"]
