"""Occlusion (Zeiler & Fergus, 2014): slide a patch over the image and record how much the target's score drops."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import MethodError
from ..model import TensorInfo
from ..progress import progress
from ..targets import Target
from . import register
from .base import MultiTargetMethod, RawMaps
from .baselines import baseline
from .incremental import describe, incremental_chunks, incremental_outputs, occlusion_plan
from .incremental_plan import Plan
from .layout import channels_first_np
from .perturb import SCORES, choose, chunk_size, image_score, pair, run_chunks, scores_of, with_score

if TYPE_CHECKING:
    from ..images import Prepared
    from .base import MethodContext

FILLS = ("zero", "mean", "blur", "constant")


@dataclass(frozen=True)
class OcclusionParams:
    """window: (h, w) of the occluding patch; 0 = 1/14 of the input side (16 at 224).
    stride: step between windows; 0 = half the window (windows overlap by half).
    fill: what replaces the window: zero (0 in model-input space: the dataset's mean colour under mean/std
      presets, black under raw presets), mean (the image's mean colour), blur (the image blurred with a
      Gaussian of `blur_sigma`) or constant (`value`, in model-input space).
    score: the target's softmax probability (as Zeiler & Fergus plot it) or its logit (class targets;
      callable targets are used as given).
    activation_layer: a tensor name (or auto): also map its total activation per window position.
    activation_channel: a channel of activation_layer (-1: none): also map that one neuron's activation per
      window position (Zeiler & Fergus's Fig. 7 neuron panel), at `activation_position`.
    activation_position: (row, col) of that neuron in the layer; -1 = its strongest position unoccluded.
    class_map: also map the most probable class per window position, with a legend of those classes.
    incremental: auto | true | false: recompute only what each window changes in the early layers
      (exact; auto when the graph's cost model predicts a gain, extras["incremental"] says which ran).
    approximate: 0 = exact; a threshold in (0, 1) caps each layer's changed region at that share of its map
      (Krypton's projective-field thresholding: faster, with the error the README states).
    """
    window: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (0, 0)
    fill: str = "zero"
    value: float = 0.0
    blur_sigma: float = 0.0  # 0 = half the window's longer side
    score: str = "probability"
    activation_layer: str = ""
    activation_channel: int = -1
    activation_position: tuple[int, int] = (-1, -1)
    class_map: bool = False
    incremental: str = "auto"
    approximate: float = 0.0


@register
class Occlusion(MultiTargetMethod):
    """Drop of the target's score when a patch hides each region, averaged over the windows covering a pixel.

    Windows start every `stride` pixels; as in captum's Occlusion the last window of a row or column may be
    cut by the border, so every pixel is covered, and the map is at input resolution.
    """
    name = "occlusion"
    engine = "ort"
    summary = "score drop when a sliding patch hides each region (Zeiler & Fergus)"
    Params = OcclusionParams

    def geometry(self, hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, stride) for an input size, validated with messages naming the parameter."""
        h, w = hw
        auto = (max(1, round(h / 14)), max(1, round(w / 14)))
        window = pair(self.name, "window", self.params.window, auto)
        stride = pair(self.name, "stride", self.params.stride, (max(1, window[0] // 2), max(1, window[1] // 2)))
        if window[0] > h or window[1] > w:
            raise MethodError(f"The occlusion window {window[0]}x{window[1]} is larger than the {h}x{w} input; "
                              f"use a window of at most {h}x{w}.")
        if stride[0] > window[0] or stride[1] > window[1]:
            raise MethodError(f"The occlusion stride {stride[0]}x{stride[1]} is larger than the window "
                              f"{window[0]}x{window[1]}, which would leave pixels never occluded; "
                              "use a stride of at most the window.")
        return window, stride

    def validate(self) -> None:
        p = self.params
        choose(self.name, "fill", p.fill, FILLS)
        choose(self.name, "score", p.score, SCORES)
        if not math.isfinite(p.value):
            raise MethodError(f"Parameter 'value' of method '{self.name}' must be a finite number, not {p.value}.")
        if not 0 <= p.approximate < 1:
            raise MethodError(f"Parameter 'approximate' of method '{self.name}' must be 0 (exact) or a share of the "
                              f"map in (0, 1), not {p.approximate}.")
        if p.blur_sigma < 0:
            raise MethodError(f"Parameter 'blur_sigma' of method '{self.name}' must be >= 0 (0 = automatic).")
        if p.activation_channel >= 0 and not p.activation_layer:
            raise MethodError(f"Parameter 'activation_channel' of method '{self.name}' needs an "
                              "activation_layer; pass activation_layer=TENSOR (or auto).")

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        (wh, ww), (sh, sw) = cls(params).geometry(input_hw)
        return 1 + math.prod(math.ceil(max(side - win, 0) / step) + 1
                             for side, win, step in zip(input_hw, (wh, ww), (sh, sw)))

    def explain_many(self, context, batch, targets, layer=None) -> RawMaps:
        self.validate()
        (wh, ww), (sh, sw) = self.geometry(batch.hw)
        h, w = batch.hw
        ys, xs = window_starts(h, wh, sh), window_starts(w, ww, sw)
        rows, cols = spans(ys, wh, h), spans(xs, ww, w)  # (Py, H), (Px, W) bool: what each window covers
        act_layer = context.model.resolve_layer(self.params.activation_layer) \
            if self.params.activation_layer else None
        extra = [act_layer] if act_layer and act_layer not in context.runtime.output_names else []
        outputs = list(context.runtime.output_names) + extra
        base = context.forward(batch, extra)
        act_info = context.model.tensors[act_layer] if act_layer else None
        plan = self._plan(context, batch, (wh, ww), ys, xs, bool(act_layer))
        sigma = self.params.blur_sigma or max(wh, ww) / 2
        maps, extras = [], []
        for i, image_targets in enumerate(targets):
            image_targets = [with_score(t, self.params.score) for t in image_targets]
            fill = baseline(batch.x[i], batch.spec.layout, self.params.fill, value=self.params.value, sigma=sigma)
            neuron = pick_neuron(base[act_layer][i:i + 1], act_info, self.params) if act_info else None
            scores, stats = self._occlude(context, batch, i, image_targets, fill, rows, cols, outputs, act_info, plan,
                                          neuron)
            common = {"window": (wh, ww), "stride": (sh, sw), "window_rows": ys, "window_cols": xs,
                      "forwards": int(scores.shape[1] * scores.shape[2])}
            if plan is not None:
                common["incremental"] = describe(plan, plan.worth_it or self.params.incremental == "true",
                                                 self.params.approximate)
            if act_layer:
                common.update(activation_extras(act_layer, tensor_channels(base[act_layer][i:i + 1], act_info)[0],
                                                stats["activations"], scores.shape[1:]))
            if neuron:
                common.update(neuron_channel=neuron[0], neuron_position=neuron[1:],
                              neuron_activation=stats["neuron"].reshape(scores.shape[1:]).astype(np.float32))
            if self.params.class_map:
                common["class_map"] = stats["classes"]
                common["class_legend"] = {int(c): context.label(int(c)) for c in np.unique(stats["classes"])}
            for target, target_scores in zip(image_targets, scores):
                drops = image_score(target, base, i) - target_scores
                maps.append(spread(drops, rows, cols))
                extras.append({"drops": drops.astype(np.float32), **common})
        return RawMaps(np.stack(maps), extras)

    def _plan(self, context: "MethodContext", batch: "Prepared", window: tuple[int, int], ys: np.ndarray,
              xs: np.ndarray, tapped: bool) -> Plan | None:
        """The incremental plan (None: plain occlusion), as `incremental` and the cost model decide."""
        mode = choose(self.name, "incremental", str(self.params.incremental).lower(), ("auto", "true", "false"))
        if mode == "false":
            return None
        if tapped and mode == "true":
            raise MethodError("Incremental occlusion computes only the model's outputs; drop activation_layer or "
                              "use incremental=false.")
        plan = occlusion_plan(context, batch, window, ys, xs, self.params.approximate)
        if mode == "true" and plan.cut is None:
            raise MethodError(f"Incremental occlusion cannot run on this model: {plan.reason}; use "
                              "incremental=auto or false.")
        return None if tapped else plan

    def _occlude(self, context: "MethodContext", batch: "Prepared", i: int, targets: list[Target], fill,
                 rows: np.ndarray, cols: np.ndarray, outputs: list[str], act_info: TensorInfo | None,
                 plan: Plan | None, neuron: tuple[int, int, int] | None = None) -> tuple[np.ndarray, dict]:
        """Scores (targets, Py, Px) of image `i` with each window occluded, plus the optional per-window
        statistics (per-channel activation totals, one neuron's value, top class), reduced chunk by chunk to
        keep memory flat."""
        ny, nx = len(rows), len(cols)
        total, step = ny * nx, chunk_size(context)
        x = batch.x[i][None]
        incremental = plan is not None and (plan.worth_it or self.params.incremental == "true")
        chunks = incremental_chunks(context, plan, total, step) if incremental else \
            [np.arange(s, min(s + step, total)) for s in range(0, total, step)]

        def occluded(k: np.ndarray) -> np.ndarray:
            return np.where(batch.spatial_mask(rows[k // nx, :, None] & cols[k % nx, None, :]), fill, x)

        desc = f"{self.name} {i + 1}/{len(batch)}"
        if incremental:
            runs = incremental_outputs(context, plan, batch.x[i], fill, (rows, cols), occluded, chunks, nx)
            runs = zip(chunks, progress(runs, desc=desc, quiet=context.quiet or len(chunks) < 4,
                                        total=len(chunks), unit="batch"))
        else:
            runs = run_chunks(context, chunks, len(chunks), occluded, outputs, desc)
        scores, activations, classes, neurons = [], [], [], []
        for _, out in runs:
            scores.append(scores_of(targets, out))
            if act_info:
                activations.append(tensor_channels(out[act_info.name], act_info))
            if neuron:
                c, r, col = neuron
                neurons.append(channels_first_np(out[act_info.name], act_info)[:, c, r, col].astype(np.float64))
            if self.params.class_map:
                classes.append(out[targets[0].output].reshape(len(out[targets[0].output]), -1).argmax(1))
        stats = {}
        if act_info:
            stats["activations"] = np.concatenate(activations)
        if neurons:
            stats["neuron"] = np.concatenate(neurons)
        if classes:
            stats["classes"] = np.concatenate(classes).reshape(ny, nx).astype(np.int64)
        return np.concatenate(scores, axis=1).reshape(len(targets), ny, nx), stats


def window_starts(size: int, window: int, stride: int) -> np.ndarray:
    """Start of each window along one side, as captum's Occlusion: every `stride`, the last one possibly cut."""
    return np.arange(math.ceil((size - window) / stride) + 1) * stride


def spans(starts: np.ndarray, window: int, size: int) -> np.ndarray:
    """(positions, size) bool: which pixels of a side each window covers (clipped at the border)."""
    pixels = np.arange(size)
    return (pixels >= starts[:, None]) & (pixels < starts[:, None] + window)


def spread(drops: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(H, W) map: each pixel's mean of the drops of the windows covering it (windows are row x column products)."""
    r, c = rows.astype(np.float64), cols.astype(np.float64)
    total = r.T @ drops @ c
    count = np.outer(r.sum(0), c.sum(0))
    return (total / count).astype(np.float32)


def tensor_channels(value: np.ndarray, info: TensorInfo) -> np.ndarray:
    """(N, C) totals per channel of a spatial tensor, or (N, 1) totals of any other tensor."""
    if info.spatial:
        return channels_first_np(value, info).sum((2, 3), dtype=np.float64)
    return value.reshape(len(value), -1).sum(1, dtype=np.float64)[:, None]


def pick_neuron(value: np.ndarray, info: TensorInfo, params: OcclusionParams) -> tuple[int, int, int] | None:
    """(channel, row, col) of the neuron to follow in one unoccluded image's layer value, or None when none
    is asked; the position defaults to the channel's strongest one."""
    channel, position = params.activation_channel, tuple(params.activation_position)
    if channel < 0:
        return None
    if not info.spatial:
        raise MethodError(f"activation_channel needs a spatial activation_layer; '{info.name}' is not one.")
    maps = channels_first_np(value, info)[0]
    if channel >= len(maps):
        raise MethodError(f"activation_channel {channel} is out of range for '{info.name}', which has "
                          f"{len(maps)} channels.")
    if position[0] < 0 or position[1] < 0:
        position = np.unravel_index(int(maps[channel].argmax()), maps.shape[1:])
    if not (position[0] < maps.shape[1] and position[1] < maps.shape[2]):
        raise MethodError(f"activation_position {tuple(position)} is outside the {maps.shape[1]}x{maps.shape[2]} "
                          f"grid of '{info.name}'.")
    return channel, int(position[0]), int(position[1])


def activation_extras(layer: str, unoccluded: np.ndarray, totals: np.ndarray, shape: tuple[int, int]) -> dict:
    """Total activation of `layer` per window position and, for a spatial layer, the total of its channel that
    is strongest in the unoccluded image (the feature map Zeiler & Fergus follow in their Fig. 7b).

    `unoccluded` (C,) and `totals` (windows, C) are per-channel totals from `tensor_channels`."""
    info = {"activation_layer": layer, "layer_activation": totals.sum(1).reshape(shape).astype(np.float32)}
    if totals.shape[1] > 1:
        channel = int(unoccluded.argmax())
        info["channel"] = channel
        info["channel_activation"] = totals[:, channel].reshape(shape).astype(np.float32)
    return info
