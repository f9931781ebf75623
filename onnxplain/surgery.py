"""Graph surgery: new ModelProto objects that expose, split or randomise; never edits in place.

`expose` adds tensors as graph outputs (onnxruntime never fuses away an exposed
tensor, so values stay exact at full optimisation). `split` cuts the graph at a
tensor into a head and a tail whose composition equals the full model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import TensorNameError
from .model import unknown_name_message


def _graph_tensor_names(proto: onnx.ModelProto) -> set[str]:
    names = {i.name for i in proto.graph.input}
    names.update(o for n in proto.graph.node for o in n.output if o)
    return names


def _value_info(proto: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """The declared value_info of a tensor, or an untyped one (onnxruntime accepts it)."""
    for value in list(proto.graph.value_info) + list(proto.graph.output) + list(proto.graph.input):
        if value.name == name:
            return copy.deepcopy(value)
    return helper.make_empty_tensor_value_info(name)


def expose(proto: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the model whose outputs also include the named tensors."""
    names = list(dict.fromkeys(names))
    known = _graph_tensor_names(proto)
    for name in names:
        if name not in known:
            raise TensorNameError(unknown_name_message(name, sorted(known)))
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    present = {o.name for o in new.graph.output}
    for name in names:
        if name not in present:
            value = _value_info(proto, name)
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                value.type.tensor_type.ClearField("shape")  # dims may be symbolic in ways ORT would check
            new.graph.output.append(value)
    return new


def restrict_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy whose outputs are exactly `names` (in order), with unused nodes pruned."""
    new = expose(proto, names)
    by_name = {o.name: o for o in new.graph.output}
    del new.graph.output[:]
    new.graph.output.extend(by_name[n] for n in names)
    return _prune(new)


@dataclass(frozen=True)
class Split:
    """A model cut at a tensor: head(inputs) -> [at, *crossing]; tail(at, *crossing) -> outputs."""
    head: onnx.ModelProto
    tail: onnx.ModelProto
    at: str
    crossing: tuple[str, ...]  # other tensors that cross the cut (skip connections), tail inputs after `at`


def split(proto: onnx.ModelProto, at: str) -> Split:
    """Cut the graph at tensor `at`; the tail takes `at` plus any tensor crossing the cut as inputs."""
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output if o}
    if at not in producers:
        raise TensorNameError(unknown_name_message(at, sorted(producers)))
    weights = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input if i.name not in weights}

    head_nodes = _needed(graph.node, producers, [at], stop=set())
    constant = _constant_nodes(graph.node, inputs)
    tail_nodes = _needed(graph.node, producers, [o.name for o in graph.output], stop={at})
    tail_nodes = [n for n in tail_nodes if id(n) not in {id(h) for h in head_nodes} or id(n) in constant]
    produced_in_tail = {o for n in tail_nodes for o in n.output}
    crossing = []
    for node in tail_nodes:
        for name in node.input:
            if name and name not in produced_in_tail and name not in weights and name != at \
                    and name not in crossing:
                crossing.append(name)

    head = _subgraph(proto, head_nodes, [i for i in graph.input if i.name not in weights],
                     [at] + [c for c in crossing if c not in inputs], "head")
    typed = _with_inferred_types(proto)
    tail_inputs = [_input_value_info(typed, name) for name in [at, *crossing]]
    tail = _subgraph(proto, tail_nodes, tail_inputs, [o.name for o in graph.output], "tail")
    return Split(head=head, tail=tail, at=at, crossing=tuple(crossing))


def _with_inferred_types(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with value_info from shape inference (legacy exports carry none for intermediates)."""
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        return proto


def _input_value_info(typed: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """A graph-input declaration for a tensor: its element type, shape left open."""
    value = _value_info(typed, name)
    elem_type = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
    return helper.make_tensor_value_info(name, elem_type or onnx.TensorProto.FLOAT, None)


def _needed(nodes: Sequence[onnx.NodeProto], producers: dict, wanted: list[str], stop: set[str]) -> list:
    """Nodes needed to compute `wanted`, treating tensors in `stop` as given; in graph order."""
    keep: set[int] = set()
    stack = [w for w in wanted if w not in stop]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
    return [n for n in nodes if id(n) in keep]


def _constant_nodes(nodes: Sequence[onnx.NodeProto], inputs: set[str]) -> set[int]:
    """Nodes whose outputs do not depend on any graph input (safe to copy into both halves)."""
    live = set(inputs)
    constant = set()
    for node in nodes:
        if any(i in live for i in node.input):
            live.update(node.output)
        else:
            constant.add(id(node))
    return constant


def _subgraph(proto: onnx.ModelProto, nodes: list, inputs: list, outputs: list[str], suffix: str) -> onnx.ModelProto:
    used = {i for n in nodes for i in n.input}
    initializers = [t for t in proto.graph.initializer if t.name in used]
    graph = helper.make_graph(nodes, f"{proto.graph.name}_{suffix}", inputs,
                              [_value_info(proto, o) for o in outputs], initializer=initializers)
    for value in graph.output:
        if value.type.HasField("tensor_type"):
            value.type.tensor_type.ClearField("shape")
    model = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version,
                              producer_name=proto.producer_name, producer_version=proto.producer_version)
    return model


def _prune(proto: onnx.ModelProto) -> onnx.ModelProto:
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output if o}
    nodes = _needed(graph.node, producers, [o.name for o in graph.output], stop=set())
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    weights = {t.name for t in graph.initializer}
    new_graph = helper.make_graph(nodes, graph.name, [i for i in graph.input if i.name not in weights or i.name in used],
                                  list(graph.output), initializer=[t for t in graph.initializer if t.name in used])
    return helper.make_model(new_graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version,
                             producer_name=proto.producer_name, producer_version=proto.producer_version)


def randomise(proto: onnx.ModelProto, names: Iterable[str], seed: int = 0) -> onnx.ModelProto:
    """A copy with the named weights (initializers or Constant tensors) redrawn from N(0, std of the original).

    Used by the randomisation sanity check: explanations that survive it do not depend on what was learned.
    """
    rng = np.random.default_rng(seed)
    names = set(names)
    new = onnx.ModelProto()
    new.CopyFrom(proto)

    def redraw(tensor: onnx.TensorProto) -> onnx.TensorProto:
        values = numpy_helper.to_array(tensor)
        std = float(values.std()) or 1.0
        return numpy_helper.from_array(rng.normal(0.0, std, values.shape).astype(values.dtype), tensor.name)

    done = set()
    for tensor in new.graph.initializer:
        if tensor.name in names:
            tensor.CopyFrom(redraw(tensor))
            done.add(tensor.name)
    for node in new.graph.node:
        if node.op_type == "Constant" and node.output[0] in names:
            attr = next(a for a in node.attribute if a.name == "value")
            attr.t.CopyFrom(redraw(attr.t))
            done.add(node.output[0])
    missing = names - done
    if missing:
        raise TensorNameError(f"No weight named '{sorted(missing)[0]}' in the model; "
                              "weight names are listed by `onnxplain inspect --json`.")
    return new
