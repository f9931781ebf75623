"""Errors a user can cause: one sentence saying what is wrong and what to do.

The CLI prints the sentence and exits 2; anything that is not a UserError is a
bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from typing import Sequence


class UserError(Exception):
    """Base of every error caused by the user's input, not by onnxplain."""


class ModelError(UserError):
    """The model file is missing, is not ONNX, is truncated or is unsafe to load."""


class ImageError(UserError):
    """An image could not be decoded or does not fit the model's input."""


class TensorNameError(UserError):
    """A tensor (layer) name that the model does not contain."""


class TargetError(UserError):
    """A target that the model's outputs cannot provide (class out of range, bad spec)."""


class MethodError(UserError):
    """An unknown method, a bad parameter, or a method the model cannot support."""


class DeviceError(UserError):
    """A device was asked for that cannot be used here."""


class RenderError(UserError):
    """A rendering option (colormap) that does not exist."""


def unknown_name_message(name: str, known: Sequence[str]) -> str:
    """One sentence for a tensor name the model lacks, with the nearest known names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"nearest: {', '.join(repr(c) for c in close)}" if close else "see `onnxplain inspect` for the list"
    return f"The model has no tensor named '{name}' ({hint})."
