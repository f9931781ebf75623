"""Subgraph bodies (If branches, Loop and Scan bodies) as OnnxModules run by the same node-by-node machinery.

A body may read tensors of the graphs that enclose it by name (outer scope). Those
names become extra inputs of the body's module, and the node that holds the body
reads them from the enclosing graph like ordinary inputs, so dependencies, freeing
and autograd work across the boundary.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import onnx
import torch
from torch import nn


def free_names(graph: onnx.GraphProto) -> list[str]:
    """Names a graph (and the bodies nested in it) reads but does not define: its outer-scope references."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: list[str] = []
    for node in graph.node:
        used.extend(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                used.extend(free_names(sub))
        defined.update(node.output)
    used.extend(v.name for v in graph.output)
    seen: list[str] = []
    for name in used:
        if name and name not in defined and name not in seen:
            seen.append(name)
    return seen


def body_model(graph: onnx.GraphProto, outer: Sequence[str], model: onnx.ModelProto) -> onnx.ModelProto:
    """A standalone model of a body: its inputs, then its outer-scope names as further inputs."""
    proto = onnx.ModelProto(ir_version=model.ir_version)
    proto.opset_import.extend(model.opset_import)
    proto.graph.CopyFrom(graph)
    proto.graph.input.extend(onnx.ValueInfoProto(name=name) for name in outer)
    return proto


class Body(nn.Module):
    """One subgraph ready to run: body(inputs, scope) -> tuple of its outputs.

    `scope` holds the values of every outer-scope name its node reads (in the node's
    order); `scope_index` picks this body's ones.
    """

    def __init__(self, module: nn.Module, outer: Sequence[str], scope: Sequence[str]):
        super().__init__()
        self.module = module
        self.outer = tuple(outer)
        self.scope_index = tuple(scope.index(name) for name in outer)
        self.input_count = len(module.input_names) - len(self.outer)
        self.output_count = len(module.output_names)

    def forward(self, inputs: Sequence[Any], scope: Sequence[Any]) -> tuple:
        result = self.module(*inputs, *[scope[i] for i in self.scope_index])
        return result if isinstance(result, tuple) else (result,)


def build_bodies(graphs: dict[str, onnx.GraphProto], model: onnx.ModelProto,
                 make_module: Callable[[onnx.ModelProto], nn.Module]) -> tuple[dict[str, Body], list[str]]:
    """Body per graph attribute, and the union of their outer-scope names (the node's extra inputs)."""
    outers = {name: free_names(graph) for name, graph in graphs.items()}
    scope: list[str] = []
    for names in outers.values():
        scope.extend(n for n in names if n not in scope)
    bodies = {name: Body(make_module(body_model(graph, outers[name], model)), outers[name], scope)
              for name, graph in graphs.items()}
    return bodies, scope


def as_bool(value: torch.Tensor | None, default: bool = True) -> bool:
    """A condition tensor (or an absent one) as a Python bool."""
    if value is None:
        return default
    return bool(value.reshape(-1)[0].item())
