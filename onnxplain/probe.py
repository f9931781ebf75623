"""The shape probe: one onnxruntime run on a dummy input of the real size, for shapes inference left open.

It lives beside the runtime rather than in model.py so the Model does not import surgery (which would make
a cycle as soon as surgery needs anything the model knows).
"""
from __future__ import annotations

import numpy as np
import onnx

from .surgery import expose


def probe_shapes(proto: onnx.ModelProto, unknown: set[str],
                 size: tuple[int, int] = (224, 224)) -> dict[str, tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of each tensor in `unknown` after one CPU run on zeros; {} when the run fails."""
    if not unknown:
        return {}
    import onnxruntime as ort  # the probe is the only reason to load onnxruntime here
    names = [n for n in unknown if n not in {o.name for o in proto.graph.output}]
    try:
        session = ort.InferenceSession(expose(proto, names).SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {i.name: _dummy(i, size) for i in session.get_inputs()}
        outs = [o.name for o in session.get_outputs()]
        values = session.run(outs, feeds)
    except Exception:  # a model the probe cannot run keeps the shapes inference gave
        return {}
    return {n: (v.dtype.name, tuple(v.shape)) for n, v in zip(outs, values) if n in unknown}


def _dummy(node_arg, size: tuple[int, int]) -> np.ndarray:
    """Zeros of the input's shape: unknown batch 1, unknown spatial dims from `size`."""
    shape = list(node_arg.shape)
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in shape]
    if len(dims) == 4:
        nhwc = shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
        for axis, value in zip((1, 2) if nhwc else (2, 3), size):
            if not (isinstance(shape[axis], int) and shape[axis] > 0):
                dims[axis] = value
    dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}.get(node_arg.type,
                                                                                                 np.float32)
    return np.zeros(dims, dtype)
