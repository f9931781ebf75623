"""Torch helpers shared by the gradient methods: inputs on the explainer's device, forwards with taps,
gradients of per-image target scores, layouts, reductions and seeded noise.

Every gradient is taken of the *sum* of one target score per row. Rows do not mix in
an inference-mode network, so the gradient of the sum with respect to a row's input
(or tapped tensor) is that row's own gradient: a whole batch, each image with its
own target, costs one backward pass.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodError

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..model import TensorInfo
    from ..targets import Target


@dataclass
class Grads:
    """One forward+backward: scores (rows,), the input gradient, and each tap's value and gradient."""
    scores: torch.Tensor
    input: torch.Tensor | None = None
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


def to_tensor(explainer: "Explainer", x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float32 tensor on the explainer's torch device."""
    return torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x,
                           dtype=torch.float32, device=explainer.torch_device)


def channel_axis(layout: str) -> int:
    """The channel axis of an input batch in this layout (NCHW: 1, NHWC: 3)."""
    return 1 if layout == "NCHW" else 3


def forward(explainer: "Explainer", x: torch.Tensor, taps: Sequence[str] = ()
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model's outputs by name and the tapped tensors by name, for one input batch."""
    module = explainer.module
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


def gradients(explainer: "Explainer", x: torch.Tensor, targets: Sequence["Target"], taps: Sequence[str] = (),
              wrt_input: bool = True, rule: str = "plain") -> Grads:
    """Gradients of each row's target score w.r.t. the input (when `wrt_input`) and each tap, one backward pass.

    `rule` is the module's relu rule for the backward ("plain", "guided" or "deconvnet").
    """
    module = explainer.module
    x = x.detach().requires_grad_(wrt_input)
    with torch.enable_grad(), (module.relu_rule(rule) if rule != "plain" else contextlib.nullcontext()):
        outputs, tapped = forward(explainer, x, taps)
        scores = target_scores(targets, outputs)
        wrt = ([x] if wrt_input else []) + [tapped[name] for name in taps]
        grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
    grads = [torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads)]
    result = Grads(scores.detach(), values={n: tapped[n].detach() for n in taps})
    if wrt_input:
        result.input = grads.pop(0)
    result.taps = dict(zip(taps, grads))
    return result


def batches(count: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` rows over `count` rows."""
    size = max(1, int(size))
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def spatial(value: torch.Tensor, info: "TensorInfo") -> torch.Tensor:
    """A spatial tensor as (N, C, h, w): NHWC permuted, token tensors reshaped to their grid (class token dropped)."""
    if info.layout == "NCHW":
        return value
    if info.layout == "NHWC":
        return value.permute(0, 3, 1, 2)
    if info.layout == "tokens":
        h, w = info.grid
        tokens = value[:, value.shape[1] - h * w:, :]
        return tokens.transpose(1, 2).reshape(len(value), -1, h, w)
    raise MethodError(f"Tensor '{info.name}' is not a spatial map; pick one from `onnxplain inspect --spatial`.")


def channels_first(x: torch.Tensor, layout: str) -> torch.Tensor:
    """An input batch (NCHW or NHWC) as NCHW."""
    return x if layout == "NCHW" else x.permute(0, 3, 1, 2)


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """An NCHW batch in the model's input layout."""
    return x if layout == "NCHW" else x.permute(0, 2, 3, 1)


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


def gaussian_noise(shape_chw: tuple[int, ...], count: int, std: float, seed: int, layout: str) -> torch.Tensor:
    """`count` draws of N(0, std^2) noise for one image on the CPU, in the model's input layout.

    Drawn image by image from a generator seeded with `seed` in channels-first order, so an
    image gets the same noise alone or in a batch, in NCHW or NHWC models, on CPU or GPU.
    """
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.cat([torch.randn((1,) + tuple(shape_chw), generator=generator) for _ in range(count)]) * std
    return to_layout(noise, layout)


def chw_shape(x: np.ndarray, layout: str) -> tuple[int, int, int]:
    """(C, H, W) of one image in the given layout."""
    return tuple(x.shape) if layout == "NCHW" else (x.shape[2], x.shape[0], x.shape[1])


def numpy_maps(maps: torch.Tensor) -> np.ndarray:
    """Maps as float32 numpy on the CPU."""
    return maps.detach().to("cpu", torch.float32).numpy()


def layer_info(explainer: "Explainer", layer: str | None) -> "TensorInfo":
    """TensorInfo of the spatial layer a CAM-family method works on (clear errors when missing or not a map)."""
    if layer is None:
        raise MethodError("This method needs a layer; pass a spatial tensor name, auto or last-conv.")
    return explainer.model.spatial_info(layer)
