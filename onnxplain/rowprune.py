"""Row pruning: a tail that reads only some rows of an axis (a ViT head reading the class token) computes only
those rows in every row-local op before the read.

The pass finds row selections (a Gather of one constant index, or a Slice of a constant range, on a float
tensor) and pushes each one up through ops where row r of the output needs only row r of an input:
elementwise ops with broadcasting, LayerNormalization, reductions and Softmax over other axes, MatMul/Gemm on
A's rows (B stays whole, as attention's keys and values), Transpose, Gather and Reshape that keep the axis. A
tensor also read whole (the LayerNorm output feeding Q row-wise and K/V whole) stays and gets a Slice for its
row-wise readers. Pruned ops are new copies; the originals only become dead, so each original value keeps its
meaning and the result is exact whatever the pass could not prove: where it cannot, it stops.

Shapes come from onnx shape inference at two batch sizes, and for values it leaves unknown (the legacy
exporter's Mod-computed Reshape shapes) from a probe of the tail on onnxruntime at those sizes (rowshapes.py);
dims that change with the batch are symbolic. Opset 13 or newer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from .prunerules import Dim, rule
from .rowshapes import Probed, probe, tail_shapes  # noqa: F401  (probe: tests read every value's dims)

if TYPE_CHECKING:
    from .model import Model
    from .surgery import Split

ENABLED = True  # tails of tail-based methods are row-pruned; tests switch it off to compare
MIN_OPSET = 13
SHAPE_READERS = {"Shape", "Size"}  # read no rows: they do not hold a tensor whole (see `_stale`)


@dataclass(frozen=True)
class Rows:
    """Rows [start, stop) of `axis` (a value's own axis numbering)."""
    axis: int
    start: int
    stop: int


FULL = "full"


def pruned_split(cut: "Split", model: "Model") -> "Split":
    """The split with its tail row-pruned (shapes of the tail's inputs from the model), unless ENABLED is off."""
    if not ENABLED:
        return cut
    tensors = model.tensors
    shapes = {name: tensors[name].shape for name in [cut.at, *cut.crossing] if name in tensors and tensors[name].shape}
    return replace(cut, tail=prune_rows(cut.tail, shapes))


def prune_rows(proto: onnx.ModelProto, input_shapes: Mapping[str, Sequence]) -> onnx.ModelProto:
    """The model computing only the rows its row selections read; `proto` itself when nothing can be pruned.

    `input_shapes` gives each graph input's dims (a non-int first dim is the batch)."""
    if _opset(proto) < MIN_OPSET or not any(n.op_type in ("Gather", "Slice") for n in proto.graph.node):
        return proto  # no selection to push: skip shape inference and the probe
    shapes = tail_shapes(proto, input_shapes)
    if shapes is None:
        return proto
    forced: set[str] = set()
    for _ in range(4):
        model = ir.serde.deserialize_model(proto)
        stale = _rewrite(model, shapes, forced)
        if stale is None:
            return proto
        if not stale:
            return ir.serde.serialize_model(model)
        forced |= stale
    return proto


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


# ---- the pass -----------------------------------------------------------------------------------------
def _rewrite(model: ir.Model, shapes: "Probed", forced: set[str]) -> set[str] | None:
    """Prune the model's graph in place: None when no selection gained, else the names of original values
    that stay alive beside their pruned copies (Shape readers keep them: kept whole in the next try)."""
    graph = model.graph
    nodes = list(graph)
    demand: dict[int, object] = {}       # id(value) -> Rows | FULL, joined over its readers
    reads: dict[tuple[int, int], Rows] = {}  # (id(node), input index) -> rows that node reads
    pushed, extras, seeds = {}, {}, {}
    for node in reversed(nodes):
        for value in node.outputs:
            demand[id(value)] = _join(value, reads)
        out = demand[id(node.outputs[0])] if node.outputs else FULL
        wanted = out if isinstance(out, Rows) and node.outputs[0].name not in forced else None
        found = _push(node, wanted, shapes) if wanted is not None else None
        if found is not None:
            pushed[id(node)], extras[id(node)] = found
            for i, rows in enumerate(found[0]):
                if rows is not None:
                    reads[id(node), i] = rows
            continue
        selected = _selection(node, shapes)
        if selected is not None:
            seeds[id(node)] = selected
            reads[id(node), 0] = selected[0]
    for node in nodes:  # values read by unchanged nodes count as wanted whole (their join above)
        for value in node.inputs:
            if value is not None and id(value) not in demand:
                demand[id(value)] = _join(value, reads)
    taken = {v.name for n in nodes for v in n.outputs} | {v.name for v in graph.inputs}

    def fresh(name: str) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    copies: dict[int, ir.Value] = {}
    slices: dict[tuple[int, Rows], ir.Value] = {}
    added: list[ir.Node] = []

    def pruned(value: ir.Value, rows: Rows) -> ir.Value:
        producer = value.producer()
        if demand.get(id(value)) == rows and producer is not None and id(producer) in pushed:
            return copies[id(value)]
        if (id(value), rows) not in slices:
            starts, ends, axes = (_constant(graph, [x]) for x in (rows.start, rows.stop, rows.axis))
            node = ir.Node("", "Slice", [value, starts, ends, axes])
            node.outputs[0].name = fresh(f"{value.name}_rows{rows.start}_{rows.stop}")
            added.append(node)
            slices[id(value), rows] = node.outputs[0]
        return slices[id(value), rows]

    for node in nodes:
        if id(node) not in pushed:
            continue
        rows_in, replace = pushed[id(node)], extras[id(node)]
        inputs = [None if v is None else _constant(graph, replace[i]) if i in replace
                  else pruned(v, rows_in[i]) if i < len(rows_in) and rows_in[i] is not None else v
                  for i, v in enumerate(node.inputs)]
        copy = ir.Node(node.domain, node.op_type, inputs, [_clone(a) for a in node.attributes.values()],
                       num_outputs=1)
        copy.outputs[0].name = fresh(f"{node.outputs[0].name}_rows")
        copies[id(node.outputs[0])] = copy.outputs[0]
        added.append(copy)
    gained = False
    for node in nodes:
        if id(node) in seeds and node.inputs[0].producer() is not None \
                and id(node.inputs[0].producer()) in pushed and demand[id(node.inputs[0])] == seeds[id(node)][0]:
            rows, rebased = seeds[id(node)]
            node.replace_input_with(0, copies[id(node.inputs[0])])
            for i, array in rebased.items():
                node.replace_input_with(i, _constant(graph, array))
            gained = True
    if not gained:
        return None
    graph.extend(added)
    graph.sort()
    RemoveUnusedNodesPass()(model)
    alive = {id(n) for n in graph}
    return {n.outputs[0].name for n in nodes if id(n) in pushed and id(n) in alive}


def _join(value: ir.Value, reads: dict) -> object:
    """The rows every reader of `value` reads (Shape readers aside), FULL when they differ or one reads all."""
    if value.is_graph_output():
        return FULL
    found = None
    for node, index in value.uses():
        if node.op_type in SHAPE_READERS and node.domain in ("", "ai.onnx"):
            continue
        rows = reads.get((id(node), index), FULL)
        if rows == FULL or (found is not None and rows != found):
            return FULL
        found = rows
    return FULL if found is None else found


def _push(node: ir.Node, rows: Rows, shapes: "Probed") -> tuple[list[Rows | None], dict] | None:
    """(rows each input must give, constant inputs to replace) for a copy computing only `rows`, or None."""
    if node.domain not in ("", "ai.onnx") or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                                                 for a in node.attributes.values()):
        return None
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return None
    found = rule(node, rows.axis, lambda v: _shape(v, shapes), _const, len(range(rows.start, rows.stop)))
    if found is None:
        return None
    axes, replace = found
    return [None if a is None else Rows(a, rows.start, rows.stop) for a in axes], replace


def _selection(node: ir.Node, shapes: "Probed") -> tuple[Rows, dict] | None:
    """(rows read, rebased index inputs) for a Gather of one constant index or a Slice of a constant range of
    one axis of a float tensor; None for anything else."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in ("Gather", "Slice") or len(node.inputs) < 2:
        return None
    data = node.inputs[0]
    dims = _shape(data, shapes)
    if dims is None or data.name not in shapes.floating:
        return None
    if node.op_type == "Gather":
        index = _const(node.inputs[1])
        axis = _attr(node, "axis", 0) % len(dims)
        if index is None or index.size != 1 or not isinstance(dims[axis], int) or dims[axis] < 2:
            return None
        i = int(index.reshape(-1)[0]) % dims[axis]
        return Rows(axis, i, i + 1), {1: np.zeros(index.shape, index.dtype)}
    parts = [_const(v) if v is not None else None for v in list(node.inputs[1:5]) + [None] * 3][:4]
    starts, ends, axes, steps = parts
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] is not None and axes is None) \
            or (len(node.inputs) > 4 and node.inputs[4] is not None and steps is None):
        return None
    axes = np.arange(len(starts)) if axes is None else axes
    if steps is not None and np.any(steps != 1):
        return None
    picked = []
    for k, axis in enumerate(axes):
        size = dims[int(axis) % len(dims)]
        if not isinstance(size, int):
            return None
        start, stop = (int(min(max(x + size if x < 0 else x, 0), size)) for x in (starts[k], ends[k]))
        if (start, stop) != (0, size):
            picked.append((k, int(axis) % len(dims), start, stop, size))
    if len(picked) != 1 or picked[0][3] <= picked[0][2]:
        return None
    k, axis, start, stop, size = picked[0]
    new_starts, new_ends = starts.copy(), ends.copy()
    new_starts[k], new_ends[k] = 0, stop - start
    return Rows(axis, start, stop), {1: new_starts, 2: new_ends}


# ---- small helpers ------------------------------------------------------------------------------------
def _shape(value: ir.Value | None, shapes: "Probed") -> tuple[Dim, ...] | None:
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape)
    return shapes.get(value.name)


def _const(value: ir.Value | None) -> np.ndarray | None:
    """The constant array of an initializer or Constant output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Constant" and node.domain in ("", "ai.onnx") \
            and "value" in node.attributes:
        return node.attributes["value"].value.numpy()
    return None


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _clone(attr: ir.Attr) -> ir.Attr:
    return ir.Attr(attr.name, attr.type, attr.value)


def _constant(graph: ir.Graph, values) -> ir.Value:
    """A new int64 initializer holding `values`."""
    array = np.asarray(values, dtype=np.int64) if not isinstance(values, np.ndarray) else values
    name = f"rows_const_{len(graph.initializers)}"
    while name in graph.initializers:
        name += "_"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name), shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
    graph.register_initializer(value)
    return value
