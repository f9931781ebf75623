"""Where an occluding window's change spreads, layer by layer, and where to stop recomputing only that part.

For every image-derived tensor of the graph's spatially local prefix, the changed region of each window is
a box: rows and columns are separable, so one interval per window row and one per window column describe
all windows. A cost model (multiply-adds, with a factor for the overhead of recomputing crops) picks the cut
tensor after which the tail runs on full maps; the plan says when plain occlusion is cheaper.

Approximate mode (Krypton, Nakandala et al. 2019): a box never grows beyond `threshold` times its map's side,
centred on the window; changes outside it are dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .incremental_ops import Step, make_step, map_shape

if TYPE_CHECKING:
    import onnx

    from ..model import Model

CROP_OVERHEAD = 1.6      # cost of a multiply-add on a gathered crop in torch relative to onnxruntime's full map
GATHER_COST = 0.5        # cost units per element gathered or pasted (per channel)
WORTH_IT = 0.8           # auto uses incremental occlusion when it costs less than this share of plain occlusion
COVERED = 0.9            # a box covering this share of its map ends the walk: nothing more to save


@dataclass
class Axis:
    """One axis of one tensor: the changed interval [lo, hi) per window position, and the fixed-size box
    [start, start + size) recomputed for it (the box holds the interval, shifted inside the map)."""
    lo: np.ndarray
    hi: np.ndarray
    length: int
    size: int = 0
    start: np.ndarray = field(default=None)

    @classmethod
    def of(cls, lo: np.ndarray, hi: np.ndarray, length: int, threshold: float = 0.0) -> "Axis":
        lo, hi = np.clip(lo, 0, length), np.clip(hi, 0, length)
        hi = np.maximum(hi, np.minimum(lo + 1, length))
        lo = np.minimum(lo, hi - 1)
        if threshold:
            cap = max(1, math.ceil(threshold * length))
            wide = hi - lo > cap
            mid = (lo + hi) // 2
            lo = np.where(wide, np.clip(mid - cap // 2, 0, length - cap), lo)
            hi = np.where(wide, lo + cap, hi)
        size = int((hi - lo).max())
        return cls(lo, hi, length, size, np.clip(lo, 0, length - size))

    @property
    def share(self) -> float:
        return self.size / self.length


def window_axis(starts: np.ndarray, window: int, length: int) -> Axis:
    """The input's changed rows (or columns) for windows starting at `starts`, cut at the border."""
    return Axis.of(starts, starts + window, length)


def reach(step: Step, axis: int, box: Axis) -> tuple[np.ndarray, int]:
    """(start per window, size) of the padded-input region a window step reads to compute `box`."""
    k, s, d = step.kernel[axis], step.stride[axis], step.dilation[axis]
    return box.start * s, (box.size - 1) * s + (k - 1) * d + 1


def propagate(step: Step, axis: int, inputs: list[Axis], length: int, threshold: float) -> Axis:
    """The output's changed interval along `axis` from the inputs' (a union for pointwise ops)."""
    lo = np.min([a.lo for a in inputs], axis=0)
    hi = np.max([a.hi for a in inputs], axis=0)
    if step.window:
        k, s, d, pad = step.kernel[axis], step.stride[axis], step.dilation[axis], step.pads[axis]
        lo = -((-(lo + pad - (k - 1) * d)) // s)          # ceil division
        hi = (hi - 1 + pad) // s + 1
    return Axis.of(lo, hi, length, threshold)


@dataclass
class Plan:
    """The incremental prefix (steps up to the cut), the boxes of every tensor, and the cost model's verdict."""
    steps: list[Step]
    boxes: dict[str, tuple[Axis, Axis]]
    cut: str | None
    plain_cost: float
    cost: float
    reason: str

    @property
    def speedup(self) -> float:
        return self.plain_cost / self.cost if self.cost else 1.0

    @property
    def worth_it(self) -> bool:
        return self.cut is not None and self.cost < WORTH_IT * self.plain_cost

    def describe(self) -> dict:
        return {"cut": self.cut, "steps": len(self.steps), "predicted_speedup": round(self.speedup, 2),
                "reason": self.reason}


def node_cost(model: "Model", node: "onnx.NodeProto") -> float:
    """Multiply-adds of a node on full maps (output elements times the reduction length of Conv/Gemm/MatMul)."""
    out = model.tensors.get(node.output[0]) if node.output else None
    shape = out.shape if out is not None else None
    if not shape or not all(isinstance(d, int) for d in shape[1:]):
        return 0.0
    elements = float(np.prod(shape[1:]))
    from ..graph import constant
    weight = constant(model, node.input[1]) if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 \
        else None
    if weight is not None:
        reduce = np.prod(weight.shape[1:]) if node.op_type == "Conv" else weight.shape[0 if node.op_type == "MatMul"
                                                                                       else -1]
        return elements * float(reduce)
    if node.op_type == "MatMul":
        first = model.tensors.get(node.input[0])
        return elements * float(first.shape[-1]) if first and first.shape and isinstance(first.shape[-1], int) \
            else elements
    return elements


def step_cost(step: Step, boxes: dict, shape: tuple[int, int, int]) -> tuple[float, float]:
    """(full-map cost, incremental cost per window) of one step."""
    channels, h, w = shape
    rows, cols = boxes[step.output]
    full = step.macs * channels * h * w
    gathered = sum(boxes[n][0].size * boxes[n][1].size for n in step.inputs) * channels
    if step.window:
        gathered = reach(step, 0, rows)[1] * reach(step, 1, cols)[1] * channels * len(step.inputs)
    return full, CROP_OVERHEAD * step.macs * channels * rows.size * cols.size + GATHER_COST * gathered


def build_plan(model: "Model", source: str, rows: Axis, cols: Axis, threshold: float = 0.0) -> Plan:
    """Walk the graph from input `source` while ops stay spatially local; choose the cheapest cut."""
    plain = sum(node_cost(model, n) for n in model.proto.graph.node)
    boxes = {source: (rows, cols)}
    steps: list[Step] = []
    spent, saved = 0.0, 0.0
    best = (plain, None, 0)
    reason = "the whole graph is spatially local"
    nodes = list(model.proto.graph.node)
    for position, node in enumerate(nodes):
        if not any(n in boxes for n in node.input):
            continue
        if node.op_type == "Shape":
            continue
        step = make_step(model, node, set(boxes))
        if step is None:
            reason = f"{node.op_type} node '{node.name or node.output[0]}' is not spatially local"
            break
        shape = map_shape(model, step.output)
        boxes[step.output] = tuple(propagate(step, a, [boxes[n][a] for n in step.inputs], shape[1 + a], threshold)
                                   for a in (0, 1))
        steps.append(step)
        full, incremental = step_cost(step, boxes, shape)
        spent, saved = spent + incremental, saved + full
        if _single_cut(model, nodes, position, step.output, boxes):
            paste = GATHER_COST * shape[0] * shape[1] * shape[2]
            cost = plain - saved + spent + paste
            if cost < best[0]:
                best = (cost, step.output, len(steps))
        rows_box, cols_box = boxes[step.output]
        if rows_box.share * cols_box.share >= COVERED:
            reason = f"the change covers {rows_box.share * cols_box.share:.0%} of '{step.output}'"
            break
    cost, cut, count = best
    if cut is None:
        reason = f"no cut tensor before the change spreads ({reason})"
    return Plan(steps[:count], {n: boxes[n] for n in [source] + [s.output for s in steps[:count]]}, cut, plain,
                cost, reason)


def _single_cut(model: "Model", nodes: list, position: int, name: str, boxes: dict) -> bool:
    """Whether `name` is the only changed tensor computed so far that later nodes read (besides the input,
    which the tail may read through Shape)."""
    later = {n for node in nodes[position + 1:] for n in node.input}
    source = next(iter(boxes))
    return all(n == name or n == source or n not in later for n in boxes)
