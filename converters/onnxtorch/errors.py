"""Errors the converter raises for models it cannot build and names it does not know.

They are plain exceptions (onnxtorch imports nothing from onnxplain); onnxplain
wraps them into its UserError family where a user caused them.
"""
from __future__ import annotations


class ConversionError(Exception):
    """Base of the errors raised while building an OnnxModule."""


class UnsupportedOp(ConversionError):
    """The model uses ops the registry lacks; `missing` lists (op_type, opset, node_name) for each node."""

    def __init__(self, missing: list[tuple[str, int, str]]):
        self.missing = list(missing)
        listed = ", ".join(f"{op} (opset {opset}, node '{node}')" for op, opset, node in self.missing)
        count = len(self.missing)
        super().__init__(f"The converter does not support {count} op{'s' if count != 1 else ''} in this model: "
                         f"{listed}; forward-only methods that run on onnxruntime still work.")


class UnsupportedModel(ConversionError):
    """The model is valid ONNX but uses something the converter deliberately does not run (e.g. float16)."""


class UnknownTensor(KeyError):
    """A tensor name (tap or replace) that the graph does not contain; the message names the nearest names."""

    def __init__(self, name: str, message: str):
        self.name = name
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message
