"""Control flow: If, Loop and Scan, each running its subgraph bodies (subgraph.Body) as the ONNX spec says.

Each function receives the node's own inputs, then the values of every outer-scope
name its bodies read (`scope`); the bodies pick theirs. Conditions and trip counts
are read as Python values, so the branch taken and the number of iterations follow
the data; gradients flow through whatever the bodies compute.
"""
from __future__ import annotations

import torch

from ..errors import UnsupportedModel
from ..registry import register
from ..subgraph import Body, as_bool


@register("If")
def if_(cond: torch.Tensor, *scope: torch.Tensor, then_branch: Body, else_branch: Body) -> tuple | torch.Tensor:
    """The outputs of then_branch when cond holds, else of else_branch."""
    outputs = (then_branch if as_bool(cond) else else_branch)([], scope)
    return outputs if len(outputs) > 1 else outputs[0]


def stack_scan(values: list[torch.Tensor], axis: int = 0, reverse: bool = False) -> torch.Tensor:
    """Per-iteration scan outputs stacked along `axis` (in reverse order when asked)."""
    if reverse:
        values = values[::-1]
    if not values:
        return torch.empty(0)
    rank = values[0].dim() + 1
    return torch.stack(values, axis + rank if axis < 0 else axis)


@register("Loop")
def loop(max_trip_count: torch.Tensor | None, cond: torch.Tensor | None, *values: torch.Tensor,
         body: Body) -> tuple | torch.Tensor:
    """Run body while the iteration count is below max_trip_count and the condition holds.

    Body inputs: (iteration number, condition, carried values...); body outputs:
    (condition, carried values..., scan outputs...). Returns the final carried values,
    then each scan output stacked over the iterations.
    """
    carried_count = body.input_count - 2
    carried, scope = list(values[:carried_count]), values[carried_count:]
    trips = None if max_trip_count is None else int(max_trip_count.reshape(-1)[0].item())
    keep_going = as_bool(cond)
    scans: list[list[torch.Tensor]] = [[] for _ in range(body.output_count - 1 - carried_count)]
    cond_value = cond if cond is not None else torch.tensor(True)
    iteration = 0
    while keep_going and (trips is None or iteration < trips):
        outputs = body([torch.tensor(iteration, dtype=torch.int64), cond_value, *carried], scope)
        cond_value = outputs[0]
        carried = list(outputs[1:1 + carried_count])
        for gathered, value in zip(scans, outputs[1 + carried_count:]):
            gathered.append(value)
        keep_going = as_bool(cond_value)
        iteration += 1
    results = tuple(carried) + tuple(stack_scan(v) for v in scans)
    return results if len(results) > 1 else results[0]


@register("Scan", since=9)
def scan(*values: torch.Tensor, body: Body, num_scan_inputs: int, scan_input_axes=None,
         scan_input_directions=None, scan_output_axes=None, scan_output_directions=None) -> tuple | torch.Tensor:
    """Run body once per slice of the scan inputs, carrying the state values from one step to the next.

    Returns the final states, then each scan output stacked over the steps.
    """
    state_count = body.input_count - num_scan_inputs
    states = list(values[:state_count])
    xs = values[state_count:body.input_count]
    scope = values[body.input_count:]
    in_axes = scan_input_axes or [0] * num_scan_inputs
    in_dirs = scan_input_directions or [0] * num_scan_inputs
    out_count = body.output_count - state_count
    out_axes = scan_output_axes or [0] * out_count
    out_dirs = scan_output_directions or [0] * out_count
    in_axes = [a + x.dim() if a < 0 else a for a, x in zip(in_axes, xs)]
    lengths = {x.shape[a] for x, a in zip(xs, in_axes)}
    if len(lengths) > 1:
        raise UnsupportedModel(f"Scan inputs have different lengths {sorted(lengths)} along their scan axes")
    steps = lengths.pop() if lengths else 0
    scans: list[list[torch.Tensor]] = [[] for _ in range(out_count)]
    for t in range(steps):
        slices = [x.select(a, steps - 1 - t if d else t) for x, a, d in zip(xs, in_axes, in_dirs)]
        outputs = body([*states, *slices], scope)
        states = list(outputs[:state_count])
        for gathered, value in zip(scans, outputs[state_count:]):
            gathered.append(value)
    results = tuple(states) + tuple(stack_scan(v, a, bool(d)) for v, a, d in zip(scans, out_axes, out_dirs))
    return results if len(results) > 1 else results[0]
