"""onnxplain: explain image models stored as ONNX, whatever framework exported them."""
from __future__ import annotations

from .errors import UserError
from .explainer import Explainer, Prediction
from .images import PRESETS, Preprocess
from .methods import list_methods
from .methods.base import Attribution
from .model import Model

__version__ = "0.1.0"


def load(model, **kwargs) -> Explainer:
    """An Explainer for a model path, bytes or ModelProto (keyword arguments as for Explainer)."""
    return Explainer(model, **kwargs)


__all__ = ["load", "Explainer", "Prediction", "Attribution", "Model", "Preprocess", "PRESETS", "UserError",
           "list_methods"]
