"""How one op reads its input along one axis (Taps, Scatter, Sample) and a field along one axis (Axis).

The receptive-field walk (receptive.py) composes these; receptive_ops.py builds them from ONNX nodes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TOL = 1e-6   # rounding slack when a field is cut to whole pixels
KERNEL_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool", "ConvInteger", "QLinearConv"}
WINDOW_OPS = KERNEL_OPS | {"ConvTranspose", "Resize", "Upsample", "Pad", "Slice", "SpaceToDepth", "DepthToSpace"}
GLOBAL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "Gemm", "InstanceNormalization",
              "GroupNormalization", "TopK", "RoiAlign", "MaxRoiPool", "LSTM", "GRU", "RNN", "Attention",
              "MultiHeadAttention", "NonMaxSuppression", "Einsum"}
AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "CumSum", "Concat", "Split", "Gather", "ArgMax", "ArgMin",
            "LpNormalization"}
BOOKKEEPING_OPS = {"Shape", "Size"}
NEAREST_RULES = {"round_prefer_floor": lambda x: np.ceil(x - 0.5), "round_prefer_ceil": lambda x: np.floor(x + 0.5),
                 "floor": np.floor, "ceil": np.ceil}
TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners", "tf_half_pixel_for_nn"}


# ---- how one op reads its input along one axis --------------------------------------------
@dataclass(frozen=True)
class Taps:
    """Output i reads input i*step + offset + t*dilation, t < taps (Conv, pools, Pad, Slice, SpaceToDepth)."""
    step: int
    offset: int
    taps: int = 1
    dilation: int = 1
    border: str = "zero"   # reads outside the input: zero (nothing), reflect, edge, wrap

    def affine(self) -> tuple[float, float, float]:
        return float(self.step), float(self.offset), float(self.offset + (self.taps - 1) * self.dilation)

    def reads(self, positions: np.ndarray, length: int) -> np.ndarray:
        index = (positions[:, None] * self.step + self.offset + np.arange(self.taps) * self.dilation).ravel()
        if self.border == "reflect":
            index = np.abs(index)
            index = np.where(index >= length, 2 * (length - 1) - index, index)
        elif self.border == "edge":
            index = np.clip(index, 0, length - 1)
        elif self.border == "wrap":
            index = index % length
        return index[(index >= 0) & (index < length)]


@dataclass(frozen=True)
class Scatter:
    """ConvTranspose: output i gets input q where q*stride - pad + t*dilation = i."""
    stride: int
    pad: int
    taps: int
    dilation: int = 1

    def affine(self) -> tuple[float, float, float]:
        s = self.stride
        return 1 / s, (self.pad - (self.taps - 1) * self.dilation) / s, self.pad / s

    def reads(self, positions: np.ndarray, length: int) -> np.ndarray:
        shifted = (positions[:, None] + self.pad - np.arange(self.taps) * self.dilation).ravel()
        index = shifted[shifted % self.stride == 0] // self.stride
        return index[(index >= 0) & (index < length)]


@dataclass(frozen=True)
class Sample:
    """Resize/Upsample/DepthToSpace: output i samples the input at x(i) by a nearest or interpolation rule."""
    scale: float
    transform: str   # ONNX coordinate_transformation_mode
    rule: str        # a nearest_mode, or linear / bilinear / cubic
    out_length: int | None = None

    def _extent(self, positions: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """First and last input position each output position reads (clamped to the input, as the op does)."""
        i = positions.astype(np.float64)
        if self.transform == "align_corners":
            x = i * (length - 1) / (self.out_length - 1) if self.out_length > 1 else 0 * i
        elif self.transform == "tf_half_pixel_for_nn":
            x = (i + 0.5) / self.scale
        elif self.transform in ("half_pixel", "pytorch_half_pixel"):
            x = (i + 0.5) / self.scale - 0.5
        else:
            x = i / self.scale
        if self.rule in NEAREST_RULES:
            first = last = NEAREST_RULES[self.rule](x)
        elif self.rule == "cubic":
            first, last = np.floor(x) - 1, np.floor(x) + 2
        else:
            x = np.clip(x, 0, length - 1)
            first = np.floor(x)
            last = first + (x - first > 1e-9)
        first, last = np.clip(first, 0, length - 1), np.clip(last, 0, length - 1)
        return first.astype(np.int64), last.astype(np.int64)

    def affine(self) -> tuple[float, float, float]:
        """The tightest window [i/scale + lo, i/scale + hi], measured over positions away from the borders."""
        if self.transform == "align_corners":
            positions, length = np.arange(self.out_length), max(1, round(self.out_length / self.scale))
        else:
            positions, length = np.arange(64, 576), 1 << 30
        first, last = self._extent(positions, length)
        step = 1 / self.scale
        return step, round(float((first - positions * step).min()), 9), round(float((last - positions * step).max()), 9)

    def reads(self, positions: np.ndarray, length: int) -> np.ndarray:
        first, last = self._extent(positions, length)
        index = first[:, None] + np.arange(4)
        return np.unique(index[index <= last[:, None]])


Reader = Taps | Scatter | Sample


# ---- fields --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """Field along one spatial axis: position i sees [start + i*stride, start + i*stride + size - 1]."""
    size: float
    stride: float
    start: float

    @property
    def is_global(self) -> bool:
        return math.isinf(self.size)

    def window(self, step: float, lo: float, hi: float) -> "Axis":
        """The field of an op whose output position i reads input positions [i*step + lo, i*step + hi]."""
        if self.is_global:
            return self
        return Axis(self.size + (hi - lo) * self.stride, self.stride * step, self.start + lo * self.stride)


PIXEL = Axis(1.0, 1.0, 0.0)
WHOLE = Axis(math.inf, 1.0, 0.0)
