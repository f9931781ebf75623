"""Graph surgery on onnx-ir: new ModelProto objects that expose, split or randomise; never edits in place.

`expose` adds tensors as graph outputs (onnxruntime never fuses away an exposed
tensor, so values stay exact at full optimisation). `split` cuts the graph at a
tensor into a head and a tail whose composition equals the full model. Every result
keeps the model's local functions, opset imports, metadata and producer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from .errors import TensorNameError, unknown_name_message


def _to_ir(proto: onnx.ModelProto) -> ir.Model:
    """An onnx-ir copy of the model (weights are read from the proto lazily, the proto is left alone)."""
    return ir.serde.deserialize_model(proto)


def _to_proto(model: ir.Model) -> onnx.ModelProto:
    return ir.serde.serialize_model(model)


def _values(graph: ir.Graph) -> dict[str, ir.Value]:
    """Every named value of the main graph: inputs, initializers and node outputs."""
    found = {v.name: v for v in graph.inputs if v.name}
    found.update({name: v for name, v in graph.initializers.items()})
    found.update({v.name: v for node in graph for v in node.outputs if v.name})
    return found


def _computed(graph: ir.Graph) -> set[str]:
    """Names a user may address: graph inputs and node outputs."""
    return {v.name for v in graph.inputs if v.name} | {v.name for node in graph for v in node.outputs if v.name}


def _reads(node: ir.Node, graph: ir.Graph) -> list[ir.Value]:
    """The main-graph values a node reads: its inputs and what its subgraphs (If, Loop, Scan) capture."""
    found = [v for v in node.inputs if v is not None]
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            subgraphs = [attr.value]
        elif attr.type == ir.AttributeType.GRAPHS:
            subgraphs = list(attr.value)
        else:
            continue
        for sub in subgraphs:
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                found.extend(v for v in inner.inputs if v is not None and v.graph is graph)
    return found


def _needed(graph: ir.Graph, wanted: Iterable[ir.Value], stop: set[str]) -> list[int]:
    """Positions of the nodes needed to compute `wanted`, treating names in `stop` as given; in graph order."""
    position = {id(node): i for i, node in enumerate(graph)}
    keep: set[int] = set()
    stack = [v for v in wanted if v.name not in stop]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if id(value) in seen or value.name in stop:
            continue
        seen.add(id(value))
        node = value.producer()
        if node is not None and id(node) in position and position[id(node)] not in keep:
            keep.add(position[id(node)])
            stack.extend(_reads(node, graph))
    return sorted(keep)


def _constant_nodes(graph: ir.Graph, inputs: set[str]) -> set[int]:
    """Positions of nodes whose outputs depend on no graph input (safe to copy into both halves)."""
    live, constant = set(inputs), set()
    for i, node in enumerate(graph):
        if any(v is not None and v.name in live for v in node.inputs):
            live.update(v.name for v in node.outputs)
        else:
            constant.add(i)
    return constant


def _keep_only(graph: ir.Graph, positions: Iterable[int]) -> None:
    """Remove every node not at `positions`, then the initializers nothing reads any more."""
    keep = set(positions)
    graph.remove([node for i, node in enumerate(graph) if i not in keep], safe=False)
    used = {id(v) for node in graph for v in _reads(node, graph)} | {id(v) for v in graph.outputs}
    for name, value in list(graph.initializers.items()):
        if id(value) not in used:
            del graph.initializers[name]
    weights = set(graph.initializers)
    inputs = [v for v in graph.inputs if not v.is_initializer() or v.name in weights]
    graph.inputs.clear()
    graph.inputs.extend(inputs)


def _open_outputs(graph: ir.Graph, values: Sequence[ir.Value]) -> None:
    """Set the graph's outputs, their dims left open (they may be symbolic in ways onnxruntime would check)."""
    graph.outputs.clear()
    for value in values:
        _open(value)
        graph.outputs.append(value)


def _open(value: ir.Value) -> None:
    """Forget an intermediate value's dims (a graph input keeps the dims it is fed with)."""
    if not value.is_graph_input():
        value.shape = None


def _check(graph: ir.Graph, names: Iterable[str], known: set[str] | None = None) -> None:
    known = _computed(graph) if known is None else known
    for name in names:
        if name not in known:
            raise TensorNameError(unknown_name_message(name, sorted(known)))


def expose(proto: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the model whose outputs also include the named tensors."""
    names = list(dict.fromkeys(names))
    model = _to_ir(proto)
    graph = model.graph
    _check(graph, names)
    values = _values(graph)
    present = {v.name for v in graph.outputs}
    for name in names:
        if name not in present:
            _open(values[name])
            graph.outputs.append(values[name])
    return _to_proto(model)


def restrict_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy whose outputs are exactly `names` (in order), with unused nodes pruned."""
    model = _to_ir(proto)
    graph = model.graph
    _check(graph, names)
    values = _values(graph)
    declared = {v.name for v in graph.outputs}
    graph.outputs.clear()
    for name in names:
        if name not in declared:
            _open(values[name])
        graph.outputs.append(values[name])
    _keep_only(graph, _needed(graph, graph.outputs, stop=set()))
    return _to_proto(model)


@dataclass(frozen=True)
class Split:
    """A model cut at a tensor: head(inputs) -> [at, *crossing]; tail(at, *crossing) -> outputs."""
    head: onnx.ModelProto
    tail: onnx.ModelProto
    at: str
    crossing: tuple[str, ...]  # other tensors that cross the cut (skip connections), tail inputs after `at`


def split(proto: onnx.ModelProto, at: str) -> Split:
    """Cut the graph at tensor `at`; the tail takes `at` plus any tensor crossing the cut as inputs."""
    head_model, tail_model = _to_ir(proto), _to_ir(proto)
    graph = head_model.graph
    produced = {v.name for node in graph for v in node.outputs if v.name}
    _check(graph, [at], produced)
    weights = set(graph.initializers)
    inputs = {v.name for v in graph.inputs if v.name not in weights}
    values = _values(graph)

    head_nodes = _needed(graph, [values[at]], stop=set())
    constant = _constant_nodes(graph, inputs)
    tail_nodes = [i for i in _needed(graph, graph.outputs, stop={at}) if i not in set(head_nodes) or i in constant]
    nodes = list(graph)
    produced_in_tail = {v.name for i in tail_nodes for v in nodes[i].outputs}
    crossing: list[str] = []
    for i in tail_nodes:
        for value in _reads(nodes[i], graph):
            name = value.name
            if name and name not in produced_in_tail and name not in weights and name != at and name not in crossing:
                crossing.append(name)

    _open_outputs(graph, [values[n] for n in [at, *crossing] if n not in inputs])
    _keep_only(graph, head_nodes)
    graph.name = f"{graph.name}_head"
    _cut_tail(tail_model, proto, at, crossing, tail_nodes)
    return Split(head=_to_proto(head_model), tail=_to_proto(tail_model), at=at, crossing=tuple(crossing))


def _cut_tail(model: ir.Model, proto: onnx.ModelProto, at: str, crossing: list[str], nodes: list[int]) -> None:
    """Turn `model` into the tail: `at` and the crossing tensors become its inputs, typed by shape inference."""
    graph = model.graph
    values = _values(graph)
    elem_types = _elem_types(proto, [at, *crossing])
    new_inputs = []
    for name in [at, *crossing]:
        old = values[name]
        if old.is_graph_input():
            new_inputs.append(old)
            continue
        new = ir.Value(name=name, type=ir.TensorType(ir.DataType(elem_types.get(name) or ir.DataType.FLOAT)))
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        old.name = None
        new_inputs.append(new)
    graph.inputs.clear()
    graph.inputs.extend(new_inputs)
    _keep_only(graph, nodes)
    _open_outputs(graph, list(graph.outputs))
    graph.name = f"{graph.name}_tail"


def _elem_types(proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, int]:
    """Element types of tensors from shape inference (legacy exports carry no value_info for intermediates)."""
    try:
        typed = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        typed = proto
    wanted, found = set(names), {}
    for value in list(typed.graph.value_info) + list(typed.graph.output) + list(typed.graph.input):
        if value.name in wanted and value.name not in found and value.type.HasField("tensor_type"):
            found[value.name] = value.type.tensor_type.elem_type
    return found


def randomise(proto: onnx.ModelProto, names: Iterable[str], seed: int = 0) -> onnx.ModelProto:
    """A copy with the named weights (initializers or Constant tensors) redrawn from N(0, std of the original).

    Used by the randomisation sanity check: explanations that survive it do not depend on what was learned.
    """
    rng = np.random.default_rng(seed)
    names = set(names)
    model = _to_ir(proto)
    graph = model.graph

    def redraw(tensor: ir.TensorProtocol, name: str) -> ir.Tensor:
        values = tensor.numpy()
        std = float(values.std()) or 1.0
        return ir.tensor(rng.normal(0.0, std, values.shape).astype(values.dtype), name=name)

    done = set()
    for name, value in graph.initializers.items():
        if name in names:
            value.const_value = redraw(value.const_value, name)
            done.add(name)
    for node in graph:
        if node.op_type == "Constant" and node.domain == "" and node.outputs[0].name in names:
            name = node.outputs[0].name
            node.attributes["value"] = ir.AttrTensor("value", redraw(node.attributes["value"].value, name))
            done.add(name)
    missing = names - done
    if missing:
        raise TensorNameError(f"No weight named '{sorted(missing)[0]}' in the model; "
                              "weight names are listed by `onnxplain inspect --json`.")
    return _to_proto(model)
