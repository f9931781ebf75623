"""Torch helpers shared by the gradient methods: inputs on the context's device, forwards with taps,
gradients of per-image target scores, channel reductions and resizing.

Every gradient is taken of the *sum* of one target score per row. Rows do not mix in
an inference-mode network, so the gradient of the sum with respect to a row's input
(or tapped tensor) is that row's own gradient: a whole batch, each image with its
own target, costs one backward pass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodError
from .layout import channel_axis

if TYPE_CHECKING:
    from .base import MethodContext
    from ..model import TensorInfo
    from ..targets import Target


@dataclass
class Grads:
    """One forward+backward: scores (rows,), the input gradient, and each tap's value and gradient."""
    scores: torch.Tensor
    input: torch.Tensor | None = None
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


def to_tensor(context: "MethodContext", x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor on the context's torch device."""
    return torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x,
                           dtype=torch.float32, device=context.torch_device)


def forward(context: "MethodContext", x: torch.Tensor, taps: Sequence[str] = ()
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's outputs by name and the tapped tensors by name, for one input batch."""
    module = context.module
    if taps:
        outputs, tapped = module(x, taps=list(taps))
    else:
        outputs, tapped = module(x), {}
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    return dict(zip(module.output_names, outputs)), dict(tapped)


def target_scores(targets: Sequence["Target"], outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One score per row: row r scored by targets[r] (rows sharing a target are scored together)."""
    rows = len(next(iter(outputs.values())))
    if len(targets) != rows:
        raise ValueError(f"{len(targets)} targets for {rows} rows")
    groups: list[tuple["Target", list[int]]] = []
    for r, target in enumerate(targets):
        for known, members in groups:
            if known is target or known == target:
                members.append(r)
                break
        else:
            groups.append((target, [r]))
    if len(groups) == 1:
        return _as_scores(groups[0][0].score(outputs), rows)
    scores = torch.empty(rows, device=next(iter(outputs.values())).device, dtype=torch.float32)
    for target, members in groups:
        index = torch.as_tensor(members, device=scores.device)
        subset = {k: v.index_select(0, index) for k, v in outputs.items()}
        scores = scores.index_put((index,), _as_scores(target.score(subset), len(members)).to(scores.dtype))
    return scores


def _as_scores(value, rows: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.reshape(-1).shape[0] != rows:
        raise MethodError("The target must return one torch score per image for gradient methods; "
                          f"it returned {type(value).__name__} of shape {getattr(value, 'shape', '?')}.")
    return value.reshape(rows)


def gradients(context: "MethodContext", x: torch.Tensor, targets: Sequence["Target"], taps: Sequence[str] = (),
              wrt_input: bool = True, rule: str = "plain", clip_upper: str | None = None) -> Grads:
    """Gradients of each row's target score w.r.t. the input (when `wrt_input`) and each tap, one backward pass.

    `rule` is the module's relu rule for the backward ("plain", "guided" or "deconvnet"); `clip_upper` its
    choice at a Clip's upper bound ("block", "pass"; None: the rule's own, see OnnxModule.relu_rule).
    """
    module = context.module
    x = x.detach().requires_grad_(wrt_input)
    with torch.enable_grad(), (module.relu_rule(rule, clip_upper) if rule != "plain" else contextlib.nullcontext()):
        outputs, tapped = forward(context, x, taps)
        scores = target_scores(targets, outputs)
        wrt = ([x] if wrt_input else []) + [tapped[name] for name in taps]
        grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
    result = Grads(scores.detach(), values={n: tapped[n].detach() for n in taps})
    if wrt_input:
        result.input = grads.pop(0)
    result.taps = dict(zip(taps, grads))
    return result


def reduce_channels(value: torch.Tensor, layout: str, signed: bool = False) -> torch.Tensor:
    """(N, H, W) from an input-shaped tensor: max of |value| over channels, or the signed sum when `signed`."""
    axis = channel_axis(layout)
    return value.sum(axis) if signed else value.abs().amax(axis)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) or (N, C, h, w) maps resized bilinearly (half-pixel centres, as cv2.resize) to `size`."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    squeeze = maps.dim() == 3
    value = maps[:, None] if squeeze else maps
    value = F.interpolate(value, size=tuple(size), mode="bilinear", align_corners=False)
    return value[:, 0] if squeeze else value


def minmax(maps: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Each map scaled to [0, 1] over its last `dims` axes (x - min) / (max + 1e-7), as pytorch-grad-cam does."""
    flat = maps.flatten(-dims)
    low = flat.amin(-1, keepdim=True)
    flat = flat - low
    flat = flat / (flat.amax(-1, keepdim=True) + 1e-7)
    return flat.reshape(maps.shape)


def numpy_maps(maps: torch.Tensor) -> np.ndarray:
    """Maps as float32 numpy on the CPU."""
    return maps.detach().to("cpu", torch.float32).numpy()


def layer_info(context: "MethodContext", layer: str | None) -> "TensorInfo":
    """TensorInfo of the spatial layer a CAM-family method works on (clear errors when missing or not a map)."""
    if layer is None:
        raise MethodError("This method needs a layer; pass a spatial tensor name, auto or last-conv.")
    return context.model.spatial_info(layer)
