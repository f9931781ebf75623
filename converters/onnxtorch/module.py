"""OnnxModule: an nn.Module that runs an ONNX graph node by node with torch ops, so autograd works.

Build once: weights become parameters/buffers, constant integer subgraphs are
folded, and every remaining node becomes a step (function, input slots, output
slots, keyword arguments). A forward walks a cached plan of steps for the
requested taps/replacements and frees each intermediate after its last consumer.
"""
from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import onnx
import torch
from torch import nn

from .checks import holds_unsigned_wide, refusal_message, refusals
from .errors import UnknownTensor, UnsupportedModel, UnsupportedOp
from .graph import (NodeInfo, attribute_values, call_arguments, check_precision, missing_ops, node_label,
                    opset_versions, to_torch_tensor, topological_order)
from .ops.activation import CLIP_UPPER, RELU_RULES, RULE_FUNCTIONS, SCALAR_INPUTS, clip_with_rule
from .registry import lookup
from .subgraph import build_bodies

NO_TENSOR = 0  # slot that always holds None: missing optional inputs and dropped outputs


@dataclass
class Step:
    """One node ready to run: fn(*env[inputs], **kwargs) -> env[outputs]."""

    fn: Callable
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    kwargs: dict[str, Any]
    node: NodeInfo
    rule_fn: Callable | None = None  # Relu-like ops: the function taking rule=... for guided/deconvnet


@dataclass
class Plan:
    """Steps to run for one (rule, taps, replace) request, with what to free after each."""

    steps: list[tuple[Callable, tuple[int, ...], tuple[int, ...], dict, tuple[int, ...], tuple[int, ...]]]
    params: list[tuple[int, str]]
    buffers: list[tuple[int, str]]
    needed_inputs: set[int]
    tap_slots: tuple[int, ...]


def sanitise(name: str) -> str:
    """A torch registry key for an ONNX name ('.', '/', ':' and the like become '_')."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name) or "tensor"


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module; see `to_torch` for how to build one.

    forward(*inputs) returns the graph outputs (one tensor, or a tuple); with
    taps=[names] it returns (outputs_tuple, {name: tensor}) and a tapped float tensor
    always requires grad when grad mode is on, so autograd can start there even with
    frozen weights. replace={name: tensor} substitutes a tensor's value and skips
    whatever upstream work is then not needed.
    """

    def __init__(self, model: onnx.ModelProto, *, requires_grad: bool = False, unsigned: bool = False):
        """`unsigned`: compute uint16/32/64 values in int64 even if this graph declares none (a body reading
        such values from its enclosing graph); found by itself otherwise."""
        super().__init__()
        missing = missing_ops(model)
        if missing:
            raise UnsupportedOp(missing)
        check_precision(model)
        reasons = refusals(model)
        if reasons:
            raise UnsupportedModel(refusal_message(reasons))
        graph = model.graph
        self.opset = opset_versions(model).get("", 1)
        self.onnx_name_of: dict[str, str] = {}
        self._key_of: dict[str, str] = {}
        self._slot_of: dict[str, int] = {"": NO_TENSOR}
        self._constants: dict[str, torch.Tensor] = {}
        self._relu_rule = "plain"
        self._clip_upper: str | None = None
        self._plans: dict[tuple, Plan] = {}
        self._model = model  # bodies of If/Loop/Scan take its opsets; only needed while building
        self._unsigned = unsigned or holds_unsigned_wide(model)  # ops then take their int64 path

        initializers = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in initializers]
        self.output_names = [v.name for v in graph.output]
        for tensor in graph.initializer:
            self._add_constant(tensor.name, to_torch_tensor(tensor), requires_grad, weight=True)
        for name in self.input_names:
            self._slot(name)

        self.tensor_names: list[str] = []
        self._producers: dict[str, NodeInfo] = {}
        self._steps: list[Step] = []
        for position, (index, node) in enumerate(topological_order(graph)):
            info = NodeInfo(node.op_type, node_label(node, index), node.domain, tuple(node.input),
                            tuple(node.output), position)
            for name in node.output:
                if name:
                    self.tensor_names.append(name)
                    self._producers[name] = info
            self._add_node(node, info, requires_grad)
        self._constants.clear()  # only needed while building
        del self._model

    # --- building -------------------------------------------------------------------------------

    def _slot(self, name: str) -> int:
        """The env slot of a tensor name (allocated on first sight)."""
        if name not in self._slot_of:
            self._slot_of[name] = len(self._slot_of)
        return self._slot_of[name]

    def _add_constant(self, name: str, value: torch.Tensor, requires_grad: bool, *, weight: bool) -> None:
        """Register a constant: float weights as parameters, the rest (ints, bools, folded values) as buffers."""
        key = sanitise(name)
        base, n = key, 1
        while key in self.onnx_name_of or hasattr(self, key):
            n += 1
            key = f"{base}_{n}"
        if weight and value.is_floating_point():
            self.register_parameter(key, nn.Parameter(value, requires_grad=requires_grad))
        else:
            self.register_buffer(key, value, persistent=weight)
        self.onnx_name_of[key] = name
        self._key_of[name] = key
        self._constants[name] = value
        self._slot(name)

    def _add_node(self, node: onnx.NodeProto, info: NodeInfo, requires_grad: bool) -> None:
        """Turn one node into a constant, an alias of a weight, or a runtime step."""
        fn = lookup(node.op_type, self.opset)
        if self._unsigned:
            fn = getattr(fn, "unsigned", fn)
        attrs = attribute_values(node)
        kwargs = call_arguments(fn, node, attrs)
        inputs = list(node.input)
        graphs = {k: v for k, v in kwargs.items() if isinstance(v, onnx.GraphProto)}
        if graphs:  # If/Loop/Scan: each body becomes a submodule; outer-scope names are extra inputs
            bodies, scope = build_bodies(graphs, self._model,
                                         lambda proto: OnnxModule(proto, requires_grad=requires_grad,
                                                                    unsigned=self._unsigned))
            for key, body in bodies.items():
                module_key, n = f"{sanitise(info.name)}_{key}", 1
                while hasattr(self, module_key):
                    n += 1
                    module_key = f"{sanitise(info.name)}_{key}_{n}"
                self.add_module(module_key, body)
            kwargs = {**kwargs, **bodies}
            inputs += scope
        while inputs and not inputs[-1]:
            inputs.pop()
        if node.op_type == "Constant":
            self._add_constant(node.output[0], fn(**kwargs), requires_grad, weight=True)
            return
        if node.op_type == "Identity" and inputs[0] in self._key_of:  # legacy exports share weights this way
            self._key_of[node.output[0]] = self._key_of[inputs[0]]
            self._constants[node.output[0]] = self._constants[inputs[0]]
            self._slot(node.output[0])
            return
        if inputs and all(name in self._constants and not self._constants[name].is_floating_point()
                          for name in inputs if name):
            result = fn(*[self._constants[name] if name else None for name in inputs], **kwargs)
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(node.output, results):
                if name:
                    self._add_constant(name, value, requires_grad, weight=False)
            return
        inputs, kwargs = self._scalar_inputs(node.op_type, inputs, kwargs)
        rule_fn = RULE_FUNCTIONS.get(node.op_type)
        if node.op_type == "Clip" and not self._is_zero_lower_bound(inputs, kwargs):
            rule_fn = None
        self._steps.append(Step(fn, tuple(self._slot(n) if n else NO_TENSOR for n in inputs),
                                tuple(self._slot(n) if n else NO_TENSOR for n in node.output),
                                kwargs, info, rule_fn))

    def _scalar_inputs(self, op_type: str, inputs: list[str], kwargs: dict) -> tuple[list[str], dict]:
        """Trailing one-element constant inputs listed in SCALAR_INPUTS become keyword numbers (Clip bounds),
        so the op runs with number arguments instead of reading tensors on every call."""
        names = SCALAR_INPUTS.get(op_type)
        if not names:
            return inputs, kwargs
        kwargs = dict(kwargs)
        while len(inputs) > 1 and (not inputs[-1] or (inputs[-1] in self._constants
                                                      and self._constants[inputs[-1]].numel() == 1)):
            name = inputs.pop()
            if name:
                kwargs[names[len(inputs) - 1]] = self._constants[name].reshape(-1)[0].item()
        return inputs, kwargs

    def _is_zero_lower_bound(self, inputs: list[str], kwargs: dict) -> bool:
        """Whether a Clip's lower bound is a constant 0 (ReLU6 and the like)."""
        if "min" in kwargs:
            return kwargs["min"] == 0
        if len(inputs) < 2 or inputs[1] not in self._constants:
            return False
        bound = self._constants[inputs[1]]
        return bound.numel() == 1 and float(bound.reshape(-1)[0]) == 0.0

    # --- names ----------------------------------------------------------------------------------

    def producer(self, name: str) -> NodeInfo | None:
        """The node that produces tensor `name` (None for graph inputs and initializers)."""
        if name in self._producers:
            return self._producers[name]
        if name in self._slot_of and name:
            return None
        raise self._unknown(name)

    @property
    def constant_names(self) -> list[str]:
        """ONNX names the module holds as parameters or buffers (initializers, Constant nodes, weights
        shared through Identity, folded constant subgraphs) rather than computing them per call."""
        return list(self._key_of)

    def param(self, onnx_name: str) -> torch.Tensor:
        """The parameter or buffer holding the ONNX weight `onnx_name` (shared weights give the same object)."""
        key = self._key_of.get(onnx_name)
        if key is None:
            raise self._unknown(onnx_name, what="weight")
        return self._parameters[key] if key in self._parameters else self._buffers[key]

    def _unknown(self, name: str, what: str = "tensor") -> UnknownTensor:
        """UnknownTensor naming `name` and the nearest known names."""
        known = list(self._key_of) if what == "weight" else [n for n in self._slot_of if n]
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = (f"nearest names: {', '.join(repr(n) for n in near)}" if near
                else "see module.tensor_names for every name")
        return UnknownTensor(name, f"The model has no {what} named '{name}'; {hint}.")

    # --- relu rules -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def relu_rule(self, rule: str, clip_upper: str | None = None) -> Iterator["OnnxModule"]:
        """Within the block, Relu-like ops (Relu, LeakyRelu, PRelu, Clip with lower bound 0) backpropagate
        by `rule`: "guided" (gradient kept where it is positive and the op's slope is non-zero, as
        Springenberg et al.), "deconvnet" (positive gradient only, ignoring the forward, as Zeiler & Fergus)
        or "plain" (ordinary autograd). `clip_upper` is the rule at a Clip's upper bound (ReLU6 saturated
        at 6): "block" or "pass" the gradient; None: guided blocks, deconvnet passes."""
        if rule not in RELU_RULES:
            raise ValueError(f"relu_rule must be one of {', '.join(RELU_RULES)}, not {rule!r}")
        if clip_upper not in (None, *CLIP_UPPER):
            raise ValueError(f"clip_upper must be one of {', '.join(CLIP_UPPER)} or None, not {clip_upper!r}")
        modules = [m for m in self.modules() if isinstance(m, OnnxModule)]  # with If/Loop/Scan bodies
        previous = [(m._relu_rule, m._clip_upper) for m in modules]
        for m in modules:
            m._relu_rule, m._clip_upper = rule, clip_upper
        try:
            yield self
        finally:
            for m, (rule_before, upper_before) in zip(modules, previous):
                m._relu_rule, m._clip_upper = rule_before, upper_before

    # --- running --------------------------------------------------------------------------------

    def _plan(self, taps: tuple[str, ...], replaced: frozenset[str]) -> Plan:
        """The cached plan for this rule, taps and replaced names."""
        cache_key = (self._relu_rule, self._clip_upper, taps, replaced)
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = self._build_plan(taps, replaced)
        return plan

    def _build_plan(self, taps: tuple[str, ...], replaced: frozenset[str]) -> Plan:
        """Select the steps that the outputs and taps need, given the replaced tensors, and when to free."""
        for name in list(taps) + list(replaced):
            if name not in self._slot_of or not name:
                raise self._unknown(name)
        slot = self._slot_of
        replaced_slots = {slot[n] for n in replaced}
        wanted = {slot[n] for n in self.output_names + list(taps)}
        needed = set(wanted) - replaced_slots
        chosen: list[Step] = []
        for step in reversed(self._steps):
            if any(s in needed for s in step.outputs):
                chosen.append(step)
                needed.update(s for s in step.inputs if s not in replaced_slots)
        chosen.reverse()
        keep = wanted | {NO_TENSOR}
        last_use: dict[int, int] = {}
        for position, step in enumerate(chosen):
            for s in step.inputs:
                last_use[s] = position
        for position, step in enumerate(chosen):  # outputs nobody reads are freed at once
            for s in step.outputs:
                last_use.setdefault(s, position)
        constants = {slot[n] for n in self._key_of}
        frees: dict[int, list[int]] = {}
        for s, position in last_use.items():
            if s not in keep and s not in constants:
                frees.setdefault(position, []).append(s)
        tap_slots = {slot[n] for n in taps}
        steps = []
        for position, step in enumerate(chosen):
            fn, kwargs = step.fn, step.kwargs
            if step.rule_fn is not None and self._relu_rule != "plain":
                fn, kwargs = step.rule_fn, {**kwargs, "rule": self._relu_rule}
                if fn is clip_with_rule:
                    kwargs["upper"] = self._clip_upper
            outputs = tuple(NO_TENSOR if s in replaced_slots else s for s in step.outputs)
            steps.append((fn, step.inputs, outputs, kwargs, tuple(frees.get(position, ())),
                          tuple(s for s in outputs if s in tap_slots)))
        params, buffers = [], []
        for name, key in self._key_of.items():
            if slot[name] in needed or slot[name] in wanted:
                (params if key in self._parameters else buffers).append((slot[name], key))
        inputs = {slot[n] for n in self.input_names} & (needed | wanted)
        return Plan(steps, params, buffers, inputs - replaced_slots, tuple(s for s in tap_slots))

    def forward(self, *inputs: torch.Tensor, taps: Sequence[str] | None = None,
                replace: dict[str, torch.Tensor] | None = None):
        """Run the graph; see the class docstring for taps and replace."""
        taps = (taps,) if isinstance(taps, str) else tuple(taps) if taps else ()
        replace = replace or {}
        plan = self._plan(taps, frozenset(replace))
        if len(inputs) > len(self.input_names):
            raise TypeError(f"The model takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                            f"got {len(inputs)}.")
        env: list[Any] = [None] * len(self._slot_of)
        slot = self._slot_of
        for name, value in zip(self.input_names, inputs):
            env[slot[name]] = value
        for s in plan.needed_inputs:
            if env[s] is None:
                name = self.input_names[[slot[n] for n in self.input_names].index(s)]
                raise TypeError(f"forward needs input '{name}' for the requested outputs.")
        params, buffers = self._parameters, self._buffers
        for s, key in plan.params:
            env[s] = params[key]
        for s, key in plan.buffers:
            env[s] = buffers[key]
        for name, value in replace.items():
            env[slot[name]] = value
        track = bool(plan.tap_slots) and torch.is_grad_enabled()
        if track:
            for s in plan.tap_slots:
                env[s] = self._track(env[s])
        for fn, ins, outs, kwargs, frees, tapped in plan.steps:
            result = fn(*[env[i] for i in ins], **kwargs)
            if isinstance(result, tuple):
                for s, value in zip(outs, result):
                    env[s] = value
            else:
                env[outs[0]] = result
            if tapped and track:
                for s in tapped:
                    env[s] = self._track(env[s])
            for s in frees:
                env[s] = None
        env[NO_TENSOR] = None
        outputs = tuple(env[slot[n]] for n in self.output_names)
        if not taps:
            return outputs[0] if len(outputs) == 1 else outputs
        return outputs, {name: env[slot[name]] for name in taps}

    @staticmethod
    def _track(value: Any) -> Any:
        """A float tensor that does not require grad becomes a leaf that does (autograd can start at a tap)."""
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not value.requires_grad:
            return value.detach().requires_grad_()
        return value

    def _apply(self, fn, recurse=True):
        """As nn.Module._apply, but integer and bool buffers (shape values, indices) stay on the CPU."""
        kept = {k: b for k, b in self._buffers.items()
                if b is not None and not (b.is_floating_point() or b.is_complex())}
        super()._apply(fn, recurse)
        self._buffers.update(kept)
        return self

    def extra_repr(self) -> str:
        return f"opset={self.opset}, steps={len(self._steps)}, inputs={self.input_names}, outputs={self.output_names}"
