"""Model: an ONNX file loaded once, validated, and indexed by tensor name.

Tensor names are the addresses of everything else: layers, taps, split points
and targets are the output names of nodes, as `onnxplain inspect` lists them.
The Model is immutable after load; surgery returns new ModelProto objects.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import shape_inference

from . import graph
from .errors import ModelError, TensorNameError, unknown_name_message
from .loading import check_finite_weights, check_opset, load_external_data, read_proto
from .probe import probe_shapes

Dim = int | str | None
# Ops whose output is not a computed layer: constants, shape bookkeeping, weight plumbing.
NON_LAYER_OPS = {"Constant", "ConstantOfShape", "Shape", "Size", "Identity", "Cast", "CastLike", "Range",
                 "Dropout", "Unsqueeze", "Squeeze", "Gather", "Concat", "Slice", "Reshape", "Flatten",
                 "Transpose", "Expand", "Split", "Pad"}
CHANNEL_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization", "GroupNormalization",
               "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize",
               "Upsample", "DepthToSpace", "SpaceToDepth", "LRN", "MaxUnpool", "PRelu"}
SCOPE_KEY = "pkg.torch.onnx.name_scopes"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the graph: who produces it and what it holds."""
    name: str
    op_type: str          # producing op; "input" for graph inputs, "weight" for weights
    node_name: str
    dtype: str
    shape: tuple[Dim, ...] | None
    scope: str = ""       # torch module path from dynamo metadata, when present
    layout: str | None = None   # "NCHW", "NHWC" or "tokens" for spatial tensors
    grid: tuple[int, int] | None = None  # (H, W) for token tensors
    is_layer: bool = False

    @property
    def spatial(self) -> bool:
        """True for maps with H, W > 1 (NCHW, NHWC) or token tensors with a square grid."""
        return self.layout is not None

    @property
    def hw(self) -> tuple[int, int] | None:
        """Spatial size (H, W), or None when not spatial or not known."""
        if self.layout == "tokens":
            return self.grid
        if self.layout in ("NCHW", "NHWC") and self.shape:
            h, w = (self.shape[2], self.shape[3]) if self.layout == "NCHW" else (self.shape[1], self.shape[2])
            return (h, w) if isinstance(h, int) and isinstance(w, int) else None
        return None

    @property
    def channels(self) -> int | None:
        """Channel count of a spatial tensor."""
        if not self.spatial or not self.shape:
            return None
        c = self.shape[1] if self.layout == "NCHW" else self.shape[-1]
        return c if isinstance(c, int) else None


@dataclass(frozen=True)
class IOInfo:
    """A graph input or output: name, dtype and dims (symbolic dims by name, unknown as None)."""
    name: str
    dtype: str
    shape: tuple[Dim, ...]


def _dtype_name(elem_type: int) -> str:
    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"


def _dims(type_proto: onnx.TypeProto) -> tuple[Dim, ...] | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    return tuple(_dim(d) for d in type_proto.tensor_type.shape.dim)


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    """A dim's size, its symbolic name, or None (negative sizes, '?' and inference's 'unk__' are unknown)."""
    if d.HasField("dim_value"):
        return d.dim_value if d.dim_value > 0 else None
    return d.dim_param if d.dim_param and d.dim_param != "?" and not d.dim_param.startswith("unk__") else None


class Model:
    """An ONNX model loaded, checked and indexed; never modified after load."""

    weight_note: str | None = None  # one sentence on infinite weights (loading.check_finite_weights), if any
    weight_suspect: bool = False    # the note is about +inf (likely an export bug), not -inf masks

    def __init__(self, proto: onnx.ModelProto, path: Path | None = None,
                 probe_size: tuple[int, int] | None = None, like: "Model | None" = None):
        self.proto = proto
        self.path = path
        self.probe_size = probe_size  # (H, W) for the shape probe where the input's dims are symbolic
        # a model with the same graph (weights may differ) whose tensor index this one reuses
        self._like = like if like is not None and graph.same_structure(like.proto, proto) else None
        try:
            onnx.checker.check_model(proto, full_check=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"The model fails ONNX's checker ({first}); re-export it or fix the graph.") from None

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | onnx.ModelProto | "Model",
             probe_size: tuple[int, int] | None = None) -> "Model":
        """Load from a path, bytes or a ModelProto; external data is read from the model's folder."""
        if isinstance(source, Model):
            return source
        proto, path = read_proto(source)
        check_opset(proto)
        load_external_data(proto, path.parent if path else None)
        note, suspect = check_finite_weights(proto)
        model = cls(proto, path, probe_size)
        model.weight_note, model.weight_suspect = note, suspect
        return model

    def reweighted(self, proto: onnx.ModelProto) -> "Model":
        """A Model for `proto`, another set of weights for this graph (e.g. randomised): when the graphs match,
        it reuses this model's tensor index (shapes, layouts), skipping shape inference and the probe run."""
        return Model(proto, self.path, self.probe_size, like=self)

    # ---- identity -------------------------------------------------------------------------
    @property
    def producer(self) -> str:
        return f"{self.proto.producer_name} {self.proto.producer_version}".strip() or "unknown"

    @property
    def opset(self) -> int:
        return next((o.version for o in self.proto.opset_import if o.domain in ("", "ai.onnx")), 0)

    @property
    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self.proto.metadata_props}

    @cached_property
    def inputs(self) -> list[IOInfo]:
        """Graph inputs that are fed at run time (initializers listed as inputs are weights)."""
        if self._like is not None:
            return self._like.inputs
        weights = {t.name for t in self.proto.graph.initializer}
        return [IOInfo(v.name, _dtype_name(v.type.tensor_type.elem_type), _dims(v.type) or ())
                for v in self.proto.graph.input if v.name not in weights]

    @cached_property
    def outputs(self) -> list[IOInfo]:
        if self._like is not None:
            return self._like.outputs
        return [IOInfo(v.name, _dtype_name(v.type.tensor_type.elem_type), self._output_shape(v))
                for v in self.proto.graph.output]

    def _output_shape(self, value: onnx.ValueInfoProto) -> tuple[Dim, ...]:
        declared = _dims(value.type) or ()
        probed = self.tensors[value.name].shape if value.name in self.tensors else None
        if probed and len(probed) == len(declared):
            return tuple(d if isinstance(d, int) and d > 0 or isinstance(d, str) else p
                         for d, p in zip(declared, probed))
        return probed or declared

    # ---- weights --------------------------------------------------------------------------
    @cached_property
    def weights(self) -> dict[str, np.ndarray]:
        """Every weight by name: initializers, Constant tensors, and Identity nodes forwarding a weight."""
        return graph.weight_values(self.proto.graph)

    @cached_property
    def folded(self) -> dict[str, np.ndarray | None]:
        """Constants folded so far by graph.constant, kept for this model's lifetime."""
        return {}

    @cached_property
    def weight_bytes(self) -> int:
        unique = {id(a): a.nbytes for a in self.weights.values()}
        return sum(unique.values())

    # ---- tensor index ---------------------------------------------------------------------
    @cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        return graph.producers(self.proto.graph)

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        return graph.consumers(self.proto.graph)

    @cached_property
    def input_dependent(self) -> set[str]:
        """Tensors whose value depends on a graph input (the rest are constants)."""
        if self._like is not None:
            return self._like.input_dependent
        live = {i.name for i in self.inputs}
        for node in self.proto.graph.node:  # ONNX graphs are stored in topological order
            if any(n in live for n in node.input):
                live.update(o for o in node.output if o)
        return live

    @cached_property
    def tensors(self) -> dict[str, TensorInfo]:
        """Every input-dependent tensor: producing op, dtype, shape (inference + one probe run), layout."""
        if self._like is not None:
            return self._like.tensors
        shapes = self._inferred_shapes()
        probe = self._probe_shapes({n for n, s in shapes.items()
                                    if s is None or s[1] is None or not all(isinstance(d, int) for d in s[1][1:])})
        index: dict[str, TensorInfo] = {}
        layouts: dict[str, str | None] = {}
        for info in self.inputs:
            layouts[info.name] = _input_layout(info.shape)
            index[info.name] = _with_layout(TensorInfo(info.name, "input", "", info.dtype, info.shape),
                                            layouts[info.name])
        batch = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        for node in self.proto.graph.node:
            scope = next((p.value for p in node.metadata_props if p.key == SCOPE_KEY), "")
            for out in node.output:
                if not out or out not in self.input_dependent:
                    continue
                dtype, shape = shapes.get(out) or ("unknown", None)
                if out in probe:
                    dtype, shape = probe[out][0], _merge_dims(shape, probe[out][1], batch)
                layout = _propagate_layout(node, shape, layouts)
                layouts[out] = layout
                is_layer = node.op_type not in NON_LAYER_OPS and dtype.startswith("float")
                index[out] = _with_layout(TensorInfo(out, node.op_type, node.name, dtype, shape, scope,
                                                     is_layer=is_layer), layout if is_layer or shape else None)
        return index

    def _inferred_shapes(self) -> dict[str, tuple[str, tuple[Dim, ...] | None] | None]:
        try:
            inferred = shape_inference.infer_shapes(self.proto, strict_mode=False, data_prop=True)
        except Exception:
            inferred = self.proto
        found: dict[str, tuple[str, tuple[Dim, ...] | None] | None] = {}
        graph = inferred.graph
        for value in list(graph.value_info) + list(graph.output) + list(graph.input):
            dims = _dims(value.type)
            found[value.name] = (_dtype_name(value.type.tensor_type.elem_type), dims)
        for node in self.proto.graph.node:
            for out in node.output:
                found.setdefault(out, None)
        return found

    def _probe_shapes(self, unknown: set[str]) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Shapes that inference left open, from one run on a dummy input of the real size."""
        return probe_shapes(self.proto, unknown & self.input_dependent, self.probe_size or (224, 224))

    # ---- layers ---------------------------------------------------------------------------
    @cached_property
    def layers(self) -> list[TensorInfo]:
        """Tensors produced by compute ops, in graph order (weights and shape bookkeeping excluded)."""
        return [t for t in self.tensors.values() if t.is_layer]

    @cached_property
    def spatial_layers(self) -> list[TensorInfo]:
        return [t for t in self.layers if t.spatial]

    def auto_layer(self, output: str | None = None) -> tuple[str, str]:
        """(name, why) of the auto layer from the graph alone (no probe): layerpick.pick, what explain
        picks when its probe skips nothing."""
        from .layerpick import pick
        return pick(self, output or self.outputs[0].name)

    def ancestors(self, name: str) -> set[str]:
        """Every tensor the given tensor depends on, itself included."""
        return graph.ancestors(self, name)

    def resolve_layer(self, name: str | None, output: str | None = None) -> str:
        """A tensor name from a user's layer argument: 'auto'/'last-conv' aliases or an exact name."""
        if name in (None, "", "auto"):
            return self.auto_layer(output)[0]
        if name == "last-conv":
            convs = [t for t in self.spatial_layers if t.op_type == "Conv"]
            if not convs:
                raise TensorNameError("The model has no Conv layer; pick a layer from `onnxplain inspect --spatial`.")
            return convs[-1].name
        self.check_names([name])
        return name

    def check_names(self, names: Iterable[str]) -> None:
        """Raise one clear error for the first name the model does not contain, with the nearest names."""
        for name in names:
            if name not in self.tensors:
                raise TensorNameError(unknown_name_message(name, list(self.tensors)))

    def spatial_info(self, name: str) -> TensorInfo:
        """TensorInfo of a spatial tensor, or a clear error when the tensor is not a map."""
        self.check_names([name])
        info = self.tensors[name]
        if not info.spatial:
            raise TensorNameError(f"Tensor '{name}' (shape {_fmt_shape(info.shape)}) is not a spatial map; "
                                  "pick one from `onnxplain inspect --spatial`.")
        return info


def _fmt_shape(shape: tuple[Dim, ...] | None) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _merge_dims(inferred: tuple[Dim, ...] | None, probed: tuple[int, ...], batch: Dim) -> tuple[Dim, ...]:
    """Sizes from the probe (at the real input size); a symbolic batch dim keeps its name."""
    merged = list(probed)
    if len(merged) >= 2 and merged[0] == 1 and not isinstance(batch, int):
        same_rank = inferred is not None and len(inferred) == len(probed)
        merged[0] = inferred[0] if same_rank and inferred[0] is not None else batch
    return tuple(merged)


def _input_layout(shape: tuple[Dim, ...]) -> str | None:
    if len(shape) != 4:
        return None
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    return "NCHW"


def _propagate_layout(node: onnx.NodeProto, shape: tuple[Dim, ...] | None, layouts: dict[str, str | None]) -> str | None:
    """NCHW for ONNX's channel-first ops; Transpose moves layouts; other ops inherit from their first input."""
    if shape is None:
        return None
    if len(shape) == 3:
        return "tokens" if _token_grid(shape) else None
    if len(shape) != 4:
        return None
    if node.op_type in CHANNEL_OPS:
        return "NCHW"
    source = next((layouts.get(i) for i in node.input if layouts.get(i) in ("NCHW", "NHWC")), None)
    if node.op_type == "Transpose":
        perm = graph.attr_ints(node, "perm", [0, 3, 2, 1])
        if source == "NCHW" and perm == [0, 2, 3, 1]:
            return "NHWC"
        if source == "NHWC" and perm == [0, 3, 1, 2]:
            return "NCHW"
        return None if perm != [0, 1, 2, 3] else source
    return source


def _token_grid(shape: tuple[Dim, ...]) -> tuple[int, int] | None:
    """(H, W) of a (N, T, C) token tensor whose T is a square grid, with or without a class token."""
    tokens, channels = shape[1], shape[2]
    if not isinstance(tokens, int) or not isinstance(channels, int) or tokens < 4:
        return None
    for extra in (1, 0):
        side = math.isqrt(tokens - extra)
        if side * side == tokens - extra and side > 1:
            return side, side
    return None


def _with_layout(info: TensorInfo, layout: str | None) -> TensorInfo:
    """Keep a layout only for maps with H, W > 1 (or token grids)."""
    from dataclasses import replace
    if layout == "tokens":
        grid = _token_grid(info.shape) if info.shape else None
        return replace(info, layout="tokens" if grid else None, grid=grid)
    if layout in ("NCHW", "NHWC") and info.shape and len(info.shape) == 4:
        h, w = (info.shape[2], info.shape[3]) if layout == "NCHW" else (info.shape[1], info.shape[2])
        if isinstance(h, int) and isinstance(w, int) and h > 1 and w > 1:
            return replace(info, layout=layout)
        if (h is None or isinstance(h, str)) and info.op_type == "input":
            return replace(info, layout=layout)
    return replace(info, layout=None)
