"""Receptive fields read from the ONNX graph: which model-input pixels a layer position can see.

Every op on the path from the input is described, per spatial axis, by how its output
position i reads input positions: Conv and pools (i*stride - pad + t*dilation), Pad and
strided Slice (a shift and a step), Resize/Upsample and DepthToSpace (the sampling
rule of the op), ConvTranspose (the positions it scatters from). Elementwise ops and
Concat take the union over their branches; ops that mix every position (global pools,
Gemm, attention, reductions or softmax over H or W) see the whole input.

Two answers come from the same description:
- the textbook field (size, stride, start), walked forward: position i sees pixels
  start + i*stride ... + size - 1, before clipping (after upsampling, a cover of every
  position's field, which then alternates between positions);
- the exact box of one position, walked backward as the set of positions each op
  reads, clipped at every layer (padding reads nothing), so boxes at borders are exact
  too (cubic resizing: a cover). Dilation can leave holes inside a box.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from .readers import BOOKKEEPING_OPS, PIXEL, TOL, WHOLE, Axis
from .receptive_ops import map_hw, node_plan

if TYPE_CHECKING:
    import onnx

    from ..model import Model


@dataclass(frozen=True)
class ReceptiveField:
    """Where the positions of a layer look in the model input, per axis (rows, columns).

    `size`, `stride` and `start` are the textbook numbers: position (i, j) sees rows
    start[0] + i*stride[0] ... + size[0] - 1 (and the matching columns) before clipping;
    a global field (size inf) sees the whole input. `box` gives one position's exact box.
    """
    size: tuple[float, float]
    stride: tuple[float, float]
    start: tuple[float, float]
    input_hw: tuple[int, int] | None = None
    layer: str = ""
    _trace: Callable[[int, int], tuple[int, int] | None] | None = field(default=None, compare=False, repr=False)

    @property
    def is_global(self) -> bool:
        return math.isinf(self.size[0]) or math.isinf(self.size[1])

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) in model-input pixels, bottom/right exclusive: exactly the pixels that can
        move position (row, col). Models with symbolic shapes get the textbook `cover` instead."""
        traced = [self._trace(0, row), self._trace(1, col)] if self._trace is not None else [None]
        if None in traced:
            return self.cover(row, col)
        (top, bottom), (left, right) = traced
        return top, left, bottom, right

    def cover(self, row: int, col: int, input_hw: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """The textbook field of position (row, col) clipped to the input: contains `box`, equal away from borders
        on conv/pool paths."""
        input_hw = input_hw or self.input_hw
        if input_hw is None:
            raise ValueError("the model's input size is symbolic; pass input_hw")
        bounds = []
        for axis, index in enumerate((row, col)):
            limit = input_hw[axis]
            if math.isinf(self.size[axis]):
                bounds.append((0, limit))
                continue
            first = self.start[axis] + index * self.stride[axis]
            low, high = math.ceil(first - TOL), math.floor(first + self.size[axis] - 1 + TOL) + 1
            bounds.append((min(max(low, 0), limit), min(max(high, 0), limit)))
        (top, bottom), (left, right) = bounds
        return top, left, bottom, right

    def as_dict(self) -> dict:
        """JSON-ready: a global axis has size null."""
        return {"layer": self.layer, "size": [None if math.isinf(s) else round(s, 4) for s in self.size],
                "stride": [round(s, 4) for s in self.stride], "start": [round(s, 4) for s in self.start],
                "global": self.is_global}


def receptive_fields(model: "Model", skip_gates: bool = False) -> dict[str, ReceptiveField]:
    """The receptive field of every input-dependent tensor of the model, by tensor name.

    With skip_gates, 1x1 branches broadcast onto a map (squeeze-excitation gates) are left
    out of elementwise unions, so a gated map keeps the local field of its main branch.
    """
    walk = _Walk(model, skip_gates)
    input_hw = map_hw(model, model.inputs[0].name) if model.inputs else None
    return {name: ReceptiveField((f[0].size, f[1].size), (f[0].stride, f[1].stride), (f[0].start, f[1].start),
                                 input_hw, name, _tracer(walk, name))
            for name, f in walk.fields.items()}


def receptive_field(model: "Model", layer: str, skip_gates: bool = False) -> ReceptiveField:
    """The receptive field of one tensor (a layer name as `onnxplain inspect` lists it)."""
    model.check_names([layer])
    fields = receptive_fields(model, skip_gates)
    if layer not in fields:  # a constant sees no pixel
        return ReceptiveField((0.0, 0.0), (1.0, 1.0), (0.0, 0.0), None, layer)
    return fields[layer]


def _tracer(walk: "_Walk", layer: str) -> Callable[[int, int], tuple[int, int] | None]:
    cache: dict[tuple[int, int], tuple[int, int] | None] = {}

    def trace(axis: int, index: int) -> tuple[int, int] | None:
        if (axis, index) not in cache:
            cache[(axis, index)] = walk.trace(layer, axis, index)
        return cache[(axis, index)]
    return trace


class _Unknown(Exception):
    """A tensor length the exact trace needs is not known (symbolic shapes)."""


class _Walk:
    """One pass over the graph: how every node reads its inputs, and the textbook field of every tensor."""

    def __init__(self, model: "Model", skip_gates: bool):
        self.model = model
        self.input = model.inputs[0].name if model.inputs else ""
        self.fields: dict[str, tuple[Axis, Axis]] = {i.name: (PIXEL, PIXEL) for i in model.inputs}
        self.plans: list[tuple["onnx.NodeProto", str, object]] = []
        for node in model.proto.graph.node:
            live = [name for name in node.input if name in self.fields]
            if not live or node.op_type in BOOKKEEPING_OPS:
                continue
            kind, detail = node_plan(model, node, live, skip_gates)
            self.plans.append((node, kind, detail))
            result = self._forward(kind, detail)
            for out in node.output:
                if out:
                    self.fields[out] = result

    def _forward(self, kind: str, detail) -> tuple[Axis, Axis]:
        if kind == "window":
            name, readers = detail
            before = self.fields[name]
            return before[0].window(*readers[0].affine()), before[1].window(*readers[1].affine())
        if kind == "union":
            branches, length = detail
            axes = [self.fields[name] for name, mode in branches]
            return tuple(_union_axis([a[axis] for a in axes], length[axis] if length else None) for axis in (0, 1))
        return WHOLE, WHOLE

    def trace(self, layer: str, axis: int, index: int) -> tuple[int, int] | None:
        """(first, last + 1) of the input pixels along `axis` that position `index` of `layer` reads."""
        try:
            length = self._length(layer, axis)
            masks: dict[str, np.ndarray | None] = {layer: np.arange(length) == index}
            for node, kind, detail in reversed(self.plans):
                outs = [masks[o] for o in node.output if o in masks]
                if outs:
                    self._backward(kind, detail, _merge(outs), masks, axis)
            mask = masks.get(self.input, np.zeros(0, bool))
            if mask is None:
                return 0, self._length(self.input, axis)
            hits = np.flatnonzero(mask)
            return (int(hits[0]), int(hits[-1]) + 1) if len(hits) else (0, 0)
        except _Unknown:
            return None

    def _backward(self, kind: str, detail, out: np.ndarray | None, masks: dict, axis: int) -> None:
        """Mark in `masks` the input positions this node reads for the marked output positions (None: all)."""
        if kind == "window":
            name, readers = detail
            if out is not None:
                length = self._length(name, axis)
                marked = np.zeros(length, bool)
                marked[readers[axis].reads(np.flatnonzero(out), length)] = True
                out = marked
            _mark(masks, name, out)
        elif kind == "union":
            for name, mode in detail[0]:
                _mark(masks, name, out if mode == "same" or out is None else np.array([out.any()]))
        elif out is None or out.any():
            for name in detail:
                _mark(masks, name, None)

    def _length(self, name: str, axis: int) -> int:
        hw = map_hw(self.model, name)
        if hw is None:
            raise _Unknown(name)
        return hw[axis]


def _merge(masks: list[np.ndarray | None]) -> np.ndarray | None:
    """The union of position masks (None: every position)."""
    if any(m is None for m in masks):
        return None
    merged = masks[0].copy()
    for m in masks[1:]:
        if len(m) != len(merged):
            raise _Unknown("lengths disagree")  # shapes not as inferred: use the textbook field
        merged |= m
    return merged


def _mark(masks: dict, name: str, mask: np.ndarray | None) -> None:
    """Add `mask` to the positions marked on tensor `name`."""
    if name not in masks:
        masks[name] = None if mask is None else mask.copy()
    elif masks[name] is not None:
        masks[name] = None if mask is None else _merge([masks[name], mask])


def _union_axis(axes: list[Axis], length: int | None) -> Axis:
    """The smallest field with the largest stride that covers every branch at every position."""
    if len(axes) == 1:
        return axes[0]
    if any(a.is_global for a in axes):
        return WHOLE
    stride = max(a.stride for a in axes)
    if all(a.stride == stride for a in axes):
        start = min(a.start for a in axes)
        return Axis(max(a.start + a.size for a in axes) - start, stride, start)
    if length is None:
        return WHOLE
    ends = [(i, a) for a in axes for i in (0, length - 1)]
    start = min(a.start + i * (a.stride - stride) for i, a in ends)
    end = max(a.start + a.size + i * (a.stride - stride) for i, a in ends)
    return Axis(end - start, stride, start)
