"""What a neuron wants to see: images optimised through the torch module converted from the ONNX file.

Activation maximisation (channel, neuron, class; grids of channels), class visualisation, DeepDream,
feature inversion, fooling images (targeted PGD), texture synthesis and style transfer. Each returns
a frozen Synthesis (RGB uint8 image + the objective's history) with `.save(prefix)`.

Names load on first use (PEP 562), so importing the CLI group does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Adversarial": "common", "Objective": "common", "Space": "common", "Synthesis": "common",
    "SynthesisError": "common", "input_batch": "common", "make_objective": "common",
    "DreamParams": "deepdream", "dream": "deepdream",
    "FoolParams": "adversarial", "fool": "adversarial",
    "InvertParams": "inversion", "invert": "inversion",
    "ClassVisParams": "activation", "MaximizeParams": "activation", "class_vis": "activation",
    "maximize": "activation", "maximize_grid": "activation",
    "StyleParams": "style_transfer", "gram": "style_transfer", "style": "style_transfer",
    "texture": "style_transfer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
