"""onnxtorch: run an ONNX model as a torch module so autograd (gradients, taps, relu rules) works.

    module = onnxtorch.to_torch("model.onnx")
    logits = module(x)
    (logits,), taps = module(x, taps=["/layer4/layer4.1/relu_1/Relu_output_0"])
"""
from __future__ import annotations

import os

import onnx

from .errors import ConversionError, UnknownTensor, UnsupportedModel, UnsupportedOp
from .graph import NodeInfo, load_model, missing_ops
from .module import OnnxModule
from .registry import supported_ops

__all__ = ["to_torch", "check", "OnnxModule", "NodeInfo", "ConversionError", "UnsupportedOp", "UnsupportedModel",
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
