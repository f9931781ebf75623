"""onnxtorch: run an ONNX model as a torch module so autograd (gradients, taps, relu rules) works.

    module = onnxtorch.to_torch("model.onnx")
    logits = module(x)
    (logits,), taps = module(x, taps=["/layer4/layer4.1/relu_1/Relu_output_0"])
"""
from __future__ import annotations

import os

import onnx

from .checks import refusal_message, refusals
from .errors import ConversionError, UnknownTensor, UnsupportedModel, UnsupportedOp
from .graph import NodeInfo, check_precision, has_half, load_model, missing_ops, upcast_half
from .module import OnnxModule
from .registry import supported_ops

__all__ = ["to_torch", "check", "problem", "has_half", "upcast_half", "OnnxModule", "NodeInfo", "ConversionError",
           "UnsupportedOp", "UnsupportedModel",
           "UnknownTensor", "supported_ops"]


def to_torch(model_or_path: str | os.PathLike | bytes | onnx.ModelProto, *,
             requires_grad: bool = False) -> OnnxModule:
    """Build an OnnxModule from a path (external `.onnx.data` read from beside it), bytes or a ModelProto.

    Raises UnsupportedOp (listing every missing op) or UnsupportedModel before
    running anything. Weights are frozen unless `requires_grad`.
    """
    return OnnxModule(load_model(model_or_path), requires_grad=requires_grad)


def check(model_or_path: str | os.PathLike | bytes | onnx.ModelProto) -> list[tuple[str, int, str]]:
    """(op_type, opset, node_name) for every node the converter cannot run; empty when convertible.

    Cheap: a path is read without its external data and nothing is built.
    """
    return missing_ops(load_model(model_or_path, external_data=False))


def problem(model_or_path: str | os.PathLike | bytes | onnx.ModelProto) -> str | None:
    """Why the converter cannot take this model (missing ops, float16/bfloat16 precision, tensor types torch
    cannot run, node settings it does not handle) in one sentence,
    or None when it can. Cheap like `check`: nothing is built."""
    model = load_model(model_or_path, external_data=False)
    missing = missing_ops(model)
    if missing:
        return str(UnsupportedOp(missing))
    try:
        check_precision(model)
    except UnsupportedModel as exc:
        return str(exc)
    reasons = refusals(model)
    return refusal_message(reasons) if reasons else None
