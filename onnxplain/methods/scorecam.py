"""Score-CAM (Wang et al., 2020): each channel, upsampled and min-max normalised, masks the input; the
softmax over channels of the masked inputs' target scores weights the channels. Forward passes only."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..numeric import softmax
from . import register
from .base import MultiTargetMethod, RawMaps
from .baselines import baseline
from .perturb import choose, input_scores_many, layer_activations, optional_count, per_channel_cost
from .resample import align_corners_resize_matrix

CHANNEL_BYTES = 1 << 22  # layer channels are normalised and summed at most this many float64 bytes at a time


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) -> (K, H, W), bilinear with aligned corners, as pytorch-grad-cam's Score-CAM upsamples."""
    rows = align_corners_resize_matrix(size[0], maps.shape[1])
    cols = align_corners_resize_matrix(size[1], maps.shape[2]).T
    return rows @ maps.astype(np.float32) @ cols  # two batched matmuls: ~80x faster than a 3-operand einsum


def normalised_masks(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Channels upsampled to the input size and min-max normalised into [0, 1] each (float32)."""
    up = upsample(maps, size)
    low = up.min(axis=(1, 2), keepdims=True)
    scale = 1 / (up.max(axis=(1, 2), keepdims=True) - low + 1e-8)
    up -= low  # in place: no (K, H, W) temporaries
    up *= scale
    return up


def channel_blocks(count: int, row_bytes: int) -> list[slice]:
    """Slices over `count` channels holding at most CHANNEL_BYTES of `row_bytes` each (at least one)."""
    step = max(1, CHANNEL_BYTES // max(int(row_bytes), 1))
    return [slice(start, min(start + step, count)) for start in range(0, count, step)]


def normalised_rows(maps: np.ndarray) -> np.ndarray:
    """(K, h, w) channels as (K, h*w) float64 rows min-max normalised into [0, 1]; constant rows are all zero."""
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    flat -= low  # in place: one float64 copy of the block in all
    flat /= np.where(high > low, high - low, 1.0)
    flat[(high <= low)[:, 0]] = 0.0
    return flat


def distinct_masks(maps: np.ndarray, channels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(first index of each distinct mask, index of each channel's mask in that list) for the (K, h, w)
    channels `maps[channels]` (all of them by default); indices count within `channels`.

    Min-max normalisation and aligned-corner upsampling commute, so two channels make the same input mask
    exactly when their normalised maps agree: every constant channel (all zero after a ReLU, often over half
    of a trained network's last layer) gives the all-zero mask, and one forward serves them all. Channels are
    normalised a block at a time and compared by a digest (confirmed value by value), so memory stays within
    CHANNEL_BYTES whatever the number of channels.
    """
    channels = np.arange(len(maps)) if channels is None else np.asarray(channels)
    seen: dict[bytes, list[int]] = {}  # digest -> distinct masks (their rank) with that digest
    first: list[int] = []
    shared = np.empty(len(channels), np.int64)
    for block in channel_blocks(len(channels), maps[0].size * 8 if len(maps) else 1):
        for k, row in enumerate(normalised_rows(maps[channels[block]]), start=block.start):
            candidates = seen.setdefault(hashlib.blake2b(row.tobytes(), digest_size=16).digest(), [])
            match = next((r for r in candidates
                          if np.array_equal(row, normalised_rows(maps[channels[first[r]]][None])[0])), None)
            if match is None:
                match = len(first)
                candidates.append(match)
                first.append(k)
            shared[k] = match
    return np.asarray(first, np.int64), shared


def weighted_sum(weights: np.ndarray, maps: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """(T, h, w) float64 sums over k of weights[t, k] * maps[channels[k]], a block of channels at a time."""
    total = np.zeros((len(weights),) + maps.shape[1:])
    for block in channel_blocks(len(channels), maps[0].size * 8):
        total += np.tensordot(weights[:, block], maps[channels[block]].astype(np.float64), axes=1)
    return total


@register
class ScoreCAM(MultiTargetMethod):
    """Channel weights from how well each channel, used as an input mask, keeps the target's score.

    Weights are the softmax over channels of the masked inputs' target scores, as pytorch-grad-cam
    computes them; the map is relu(sum_k w_k A_k) at layer resolution. Costs one forward per channel.
    """
    name = "score-cam"
    engine = "ort"
    summary = "channel masks on the input, weighted by softmax of target scores (a forward per distinct mask)"
    uses_layer = True

    @dataclass(frozen=True)
    class Params:
        channels: int | None = None  # keep only this many channels with the highest mean activation (None: all)
        baseline: str = "zero"       # masked-out pixels: "zero" (0 in model space) or "blur" (blurred input)
        blur_sigma: float = 5.0      # Gaussian sigma in input pixels for baseline "blur"

    @classmethod
    def cost(cls, params, input_hw, layer_shape=None) -> int:
        return per_channel_cost(params, layer_shape)

    def explain_many(self, context, batch, targets, layer=None) -> RawMaps:
        keep = optional_count(self.name, "channels", self.params.channels)
        kind = choose(self.name, "baseline", self.params.baseline, ("zero", "blur"))
        _, _, acts = layer_activations(context, batch, layer)
        size = batch.hw
        maps, extras = [], []
        for i, image_targets in enumerate(targets):
            act = acts[i]  # its own dtype; float64 copies are made a block of channels at a time
            means = np.concatenate([act[b].astype(np.float64).mean(axis=(1, 2))
                                    for b in channel_blocks(len(act), act[0].size * 8)])
            order = np.argsort(-means, kind="stable")
            chosen = np.sort(order[:keep]) if keep else np.arange(len(act))
            distinct, shared = distinct_masks(act, chosen)
            x = batch.x[i:i + 1]
            base = None if kind == "zero" else \
                baseline(x[0], batch.spec.layout, kind, sigma=float(self.params.blur_sigma))[None]
            change = x if base is None else x - base  # masked input = base + (x - base) * mask
            buffer = np.empty((0,) + x.shape[1:], np.float32)  # reused by every chunk: no fresh pages per chunk

            def make(rows: slice) -> np.ndarray:
                nonlocal buffer
                masks = batch.spatial_mask(normalised_masks(act[chosen[distinct[rows]]], size))
                if len(buffer) < len(masks):
                    buffer = np.empty((len(masks),) + x.shape[1:], np.float32)
                out = np.multiply(change, masks, out=buffer[:len(masks)])
                return out if base is None else np.add(out, base, out=out)

            scores = input_scores_many(context, image_targets, len(distinct), x.nbytes, make,
                                       desc=f"score-cam {i + 1}/{len(targets)}")
            weights = np.stack([softmax(target_scores[shared]) for target_scores in scores])
            for cam in weighted_sum(weights, act, chosen):
                maps.append(np.maximum(cam, 0))
                extras.append({"channels": len(chosen), "forwards": len(distinct)})
        return RawMaps(np.stack(maps), extras)
