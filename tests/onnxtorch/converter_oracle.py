"""onnxruntime as the converter's oracle: run a model (optionally exposing extra tensors) and compare."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch


def session(model: str | os.PathLike | onnx.ModelProto, extra_outputs: Sequence[str] = ()) -> ort.InferenceSession:
    """A CPU session for the model, with `extra_outputs` exposed as additional graph outputs."""
    if not extra_outputs and not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if extra_outputs:
        proto = onnx.ModelProto.FromString(proto.SerializeToString())
        present = {o.name for o in proto.graph.output}
        proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra_outputs if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model, inputs: Sequence[np.ndarray | torch.Tensor], extra_outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every graph output (and each extra tensor) by name, as onnxruntime computes them."""
    sess = session(model, extra_outputs)
    feeds = {i.name: (x.detach().numpy() if isinstance(x, torch.Tensor) else x)
             for i, x in zip(sess.get_inputs(), inputs)}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def relative_error(actual, expected, floor: float = 0.0) -> float:
    """max|actual - expected| / max(max|expected|, floor): the parity measure used throughout."""
    a = actual.detach().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    b = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    if a.dtype == bool or np.issubdtype(b.dtype, np.integer):
        return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0))
    scale = max(float(np.abs(b).max(initial=0.0)), floor)
    diff = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors seen as flat vectors."""
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))
