"""onnxplain: explain image models stored as ONNX, whatever framework exported them.

The public names load on first use (PEP 562), so `import onnxplain` (and `onnxplain --help`) does not
import onnx, onnxruntime, numpy, torch or cv2.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .explainer import Explainer, Prediction
    from .images import PRESETS, Preprocess
    from .methods import list_methods
    from .methods.base import Attribution
    from .model import Model

__version__ = "0.1.0"

_EXPORTS = {"Explainer": "explainer", "Prediction": "explainer", "PRESETS": "images", "Preprocess": "images",
            "list_methods": "methods", "Attribution": "methods.base", "Model": "model"}


def load(model, **kwargs) -> "Explainer":
    """An Explainer for a model path, bytes or ModelProto (keyword arguments as for Explainer)."""
    from .explainer import Explainer
    return Explainer(model, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = ["load", "Explainer", "Prediction", "Attribution", "Model", "Preprocess", "PRESETS", "UserError",
           "list_methods"]
