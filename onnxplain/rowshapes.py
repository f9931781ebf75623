"""Every value's dims in a tail, for row pruning (rowprune.py): onnx shape inference at batch 2 and 3 where it
knows them (a few ms), and a probe of the tail on onnxruntime at those batch sizes for the values it leaves
unknown (the legacy exporter's Mod-computed Reshape shapes), run only when the pass asks about one. A dim that
changes with the batch is ("N", k), k times the batch.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import onnx

from .prunerules import Dim
from .shapefold import fold_shapes

BATCHES = (2, 3)
SMALL = 1024  # initializers up to this many elements stay for inference (shape constants); larger become inputs


class Probed:
    """Each value's dims and the names of the floating-point values. A name it does not know is looked up in
    `fallback` (called at most once, when the first such name is asked for)."""

    def __init__(self, dims: Mapping[str, "tuple[Dim, ...] | None"], floating: frozenset[str] | set[str],
                 fallback: Callable[[], "Probed | None"] | None = None):
        self.dims, self.floating, self._fallback = dict(dims), set(floating), fallback

    def get(self, name: str | None) -> "tuple[Dim, ...] | None":
        found = self.dims.get(name)
        if found is None and name is not None and self._fallback is not None:
            fallback, self._fallback = self._fallback(), None
            if fallback is not None:
                self.dims = {**fallback.dims, **{n: d for n, d in self.dims.items() if d is not None}}
                self.floating |= fallback.floating
            found = self.dims.get(name)
        return found


def tail_shapes(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence]) -> Probed | None:
    """Every value's dims: shape inference's where it knows them, the probe's for the rest (probed only when
    the pass asks about such a value). None when an input's dims are unknown. Inputs that all declare batch 1
    go to the probe alone: only a run says whether the model also takes batch 2."""
    inputs = _inputs(proto)
    if not _known(inputs, input_shapes):
        return None
    if all(list(input_shapes[i.name])[:1] == [1] for i in inputs):
        return probe(proto, input_shapes)
    inferred = infer(proto, input_shapes)
    if inferred is None:
        return probe(proto, input_shapes)
    inferred._fallback = lambda: probe(proto, input_shapes)
    return inferred


def infer(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence]) -> Probed | None:
    """The dims onnx shape inference (with data propagation) gives at batch 2 and 3, of the values whose
    dims and element type it knows at both; None when inference fails."""
    runs = []
    for batch in BATCHES:
        try:
            runs.append(_inferred(_infer_folding(_lean(proto, input_shapes, batch))))
        except Exception:  # onnx's InferenceError, or a checker error on an odd graph: the probe decides
            return None
    large = {t.name for t in proto.graph.initializer if _size(t) > SMALL}
    dims, floating = {}, set()
    for name, (shape, kind) in runs[0].items():
        other = runs[1].get(name)
        if name in large or other is None or len(other[0]) != len(shape) or None in shape or None in other[0]:
            continue
        found = tuple(_dim(*sizes) for sizes in zip(shape, other[0]))
        if None not in found:
            dims[name] = found
            if kind == "f":
                floating.add(name)
    return Probed(dims, floating)


def _infer_folding(model: onnx.ModelProto, rounds: int = 4) -> onnx.ModelProto:
    """Shape inference, then the shape arithmetic it settled folded into constants (onnx propagates no Div or
    Mod, which the legacy exporter's Reshape shapes use), again until nothing more folds."""
    for _ in range(rounds):
        del model.graph.value_info[:]
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        if not fold_shapes(model):
            break
    return model


def _lean(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence], batch: int) -> onnx.ModelProto:
    """A copy of `proto` for inference at `batch`: inputs with those dims, large initializers as typed inputs
    (inference needs their shapes, not their values), no stale value_info."""
    model = onnx.ModelProto(ir_version=proto.ir_version, opset_import=proto.opset_import, functions=proto.functions)
    graph = model.graph
    graph.node.extend(proto.graph.node)
    graph.output.extend(onnx.helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None)
                        for o in proto.graph.output)
    for value in _inputs(proto):
        dims = list(input_shapes[value.name])
        if dims and (not isinstance(dims[0], int) or dims[0] == 1):
            dims[0] = batch
        graph.input.append(onnx.helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, dims))
    for tensor in proto.graph.initializer:
        if _size(tensor) > SMALL:
            graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        else:
            graph.initializer.append(tensor)
    return model


def _inferred(model: onnx.ModelProto) -> dict[str, tuple[tuple, str]]:
    """(dims, dtype kind) of every value inference typed: None for a dim it left symbolic or unknown."""
    found = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor.HasField("shape") or not tensor.elem_type:
            continue
        try:
            kind = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).kind
        except (KeyError, TypeError, ValueError):
            kind = "?"
        found[value.name] = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim), kind)
    return found


def _size(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64))


def _inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in weights]


def _known(inputs: Sequence[onnx.ValueInfoProto], input_shapes: Mapping[str, Sequence]) -> bool:
    """Whether every input's dims past the batch are known ints."""
    return all(i.name in input_shapes and all(isinstance(d, int) for d in list(input_shapes[i.name])[1:])
               for i in inputs)


def probe(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence]) -> Probed | None:
    """Every value's dims from onnxruntime runs at batch 2 and 3 (a dim that changes is ("N", k), k times the
    batch); a model whose inputs declare batch 1 and that fails at 2 is probed at 1. None when an input's dims
    are unknown or the runs fail."""
    import onnxruntime as ort

    from .surgery import expose
    inputs = _inputs(proto)
    if not _known(inputs, input_shapes):
        return None
    names = [o for node in proto.graph.node for o in node.output if o]
    try:
        session = ort.InferenceSession(expose(proto, names).SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return None
    outs = [o.name for o in session.get_outputs()]
    runs = []
    fixed = all(list(input_shapes[i.name])[:1] == [1] for i in inputs)  # batch 1 baked in: probe at 1 alone
    for batch in (BATCHES, (1,)) if fixed else (BATCHES,):
        try:
            runs = [_run(session, inputs, input_shapes, outs, b) for b in batch]
            break
        except Exception:
            runs = []
    if not runs:
        return None
    shapes = {}
    for name in runs[0]:
        ranks = {len(r[name][0]) for r in runs}
        dims = [_dim(*ds) for ds in zip(*(r[name][0] for r in runs))] if len(ranks) == 1 else None
        shapes[name] = tuple(dims) if dims is not None and None not in dims else None
    return Probed(shapes, frozenset(n for n, (_, kind) in runs[0].items() if kind == "f"))


def _run(session, inputs, input_shapes, outs: list[str], batch: int) -> dict[str, tuple[tuple, str]]:
    """(shape, dtype kind) of every value from one run on seeded random inputs of batch `batch`."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in inputs:
        dims = list(input_shapes[value.name])
        if dims and (not isinstance(dims[0], int) or dims[0] == 1):
            dims[0] = batch
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = (rng.standard_normal(dims) if dtype.kind == "f" else np.zeros(dims)).astype(dtype)
    found = {name: (tuple(v.shape), v.dtype.kind) for name, v in zip(outs, session.run(outs, feeds))}
    found.update({name: (v.shape, v.dtype.kind) for name, v in feeds.items()})
    return found


def _dim(*sizes: int) -> Dim:
    """One dim from its sizes at batch 2 and 3 (or 1): an int, ("N", k), or None."""
    if len(set(sizes)) == 1:
        return sizes[0]
    if len(sizes) == 2 and sizes[0] % 2 == 0 and sizes[0] // 2 * 3 == sizes[1]:
        return ("N", sizes[0] // 2)
    return None


