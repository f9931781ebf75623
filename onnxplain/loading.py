"""Reading an ONNX file safely: parse errors as one sentence, external data only from the model's folder."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import ModelError

log = logging.getLogger(__name__)


def read_proto(source: str | os.PathLike | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """Parse the protobuf without external data; say clearly when it is not an ONNX model."""
    if isinstance(source, onnx.ModelProto):
        return source, None
    if isinstance(source, (bytes, bytearray)):
        path, data = None, bytes(source)
    else:
        if not isinstance(source, (str, os.PathLike)):
            raise ModelError(f"A model must be a path, ONNX bytes or a ModelProto, not {type(source).__name__}.")
        path = Path(source)
        if path.is_dir():
            raise ModelError(f"Model path '{path}' is a folder, not a file; pass the .onnx file inside it.")
        if not path.is_file():
            raise ModelError(f"Model file '{path}' does not exist; check the path.")
        data = path.read_bytes()
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:
        raise ModelError(f"{'Model file ' + repr(str(path)) if path else 'The model bytes'} is not a valid ONNX "
                         "model (it could not be parsed; it may be truncated or another format).") from None
    if not proto.graph.node or not proto.opset_import:
        raise ModelError(f"{'Model file ' + repr(str(path)) if path else 'The model bytes'} holds no ONNX graph; "
                         "pass an .onnx file exported by a framework.")
    if not proto.graph.output:
        raise ModelError(f"{'Model file ' + repr(str(path)) if path else 'The model bytes'} declares no graph "
                         "outputs, so there is nothing to explain; re-export it with its outputs.")
    return proto, path


def check_opset(proto: onnx.ModelProto) -> None:
    """Refuse, at load rather than at the first run, a default-domain opset newer than onnxruntime supports
    (one sentence naming both and what to do)."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    refusal = _ort_refusal(opset) if opset else None
    if refusal is not None:
        from .runtime import load_error
        raise load_error(Exception(refusal))


@functools.lru_cache(maxsize=None)
def _ort_refusal(opset: int) -> str | None:
    """onnxruntime's own words when it refuses default-domain `opset` (None where it loads it), from a one-node
    model stamped with it: its rule exactly, checked once per opset and process."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "opset probe", value[:1], value[1:])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # only the opset refusal is said here; anything else is left to the real model
        return str(exc) if "till opset" in str(exc) else None
    return None


def check_finite_weights(proto: onnx.ModelProto) -> tuple[str | None, bool]:
    """Refuse weights holding NaN (one sentence naming the first); infinities give one sentence (None: none),
    naming how many float tensors hold them and the first, and whether it is suspect: -inf alone is what
    attention masks use, +inf is likely a bug. Checked once per load."""
    import numpy as np
    from onnx import numpy_helper

    tensors = list(proto.graph.initializer) + [a.t for n in proto.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    infinite: list[tuple[str, int]] = []
    positive = False
    for tensor in tensors:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        values = numpy_helper.to_array(tensor)
        bad = ~np.isfinite(values)
        if not bad.any():
            continue
        nans = int(np.isnan(values).sum())
        if nans:
            raise ModelError(f"The model's weight '{tensor.name}' holds {nans} NaN value(s) of {values.size}; the "
                             "export or the training went wrong, re-export from a checkpoint with finite weights.")
        infinite.append((tensor.name, int(bad.sum())))
        positive = positive or bool((values == np.inf).any())
    if not infinite:
        return None, False
    (name, count), tensors_count = infinite[0], len(infinite)
    where = f"{tensors_count} tensor{'s' if tensors_count > 1 else ''}"
    first = f"the first '{name}' with {count} value{'s' if count > 1 else ''}"
    if positive:
        note = (f"The model's weights hold +inf in {where} ({first}); attention masks use -inf, so +inf is likely "
                "an export bug: check the explanations' scores.")
    else:
        note = f"The model's weights hold -inf in {where} (attention masks use it; {first})."
    (log.warning if positive else log.info)(note)
    return note, positive


FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def load_external_data(proto: onnx.ModelProto, folder: Path | None) -> None:
    """Read external weights, refusing any location that escapes the model's folder."""
    tensors = [t for t in external_data_helper._get_all_tensors(proto) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    if folder is None:
        raise ModelError("The model keeps weights in external data files; load it from its path, not from bytes.")
    root = folder.resolve()
    for tensor in tensors:
        location = next(e.value for e in tensor.external_data if e.key == "location")
        target = (root / location).resolve()
        if root not in target.parents and target != root:
            raise ModelError(f"External data location '{location}' points outside the model's folder; "
                             "refusing to read it (move the data file beside the model).")
        if not target.is_file():
            raise ModelError(f"External data file '{location}' is missing beside the model; "
                             "copy it into the model's folder.")
    try:
        external_data_helper.load_external_data_for_model(proto, str(root))
    except Exception as exc:
        raise ModelError(f"The model's external data could not be read ({exc}); the data file may be truncated.") \
            from None
