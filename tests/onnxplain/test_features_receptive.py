"""Receptive fields computed from the graph against hand-computed values and against the empirical field.

The empirical field of a position is the set of input pixels whose change moves that
activation: every pixel is raised by 1000 in its own copy of a random image and all
copies run through onnxruntime at once. Weights are positive (biases too), so a raised
pixel raises every activation that reads it, through max-pooling as well. Bounding
boxes are compared exactly (integers) at every position, borders included.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import helpers
from onnxplain.features.common import as_maps
from onnxplain.features.receptive import receptive_field, receptive_fields
from onnxplain.model import Model
from onnxplain.runtime import Runtime


def positive(net: nn.Module, seed: int = 0) -> nn.Module:
    """Weights in [0.5, 1] and biases 0.1, so that raising a pixel raises every activation reading it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.copy_(0.5 + 0.5 * torch.rand(module.weight.shape, generator=generator))
                if module.bias is not None:
                    module.bias.fill_(0.1)
    return net.eval()


class ConvPoolDilated(nn.Module):
    """conv3 stride 1 pad 1 -> maxpool 2 -> conv3 dilation 2 pad 2; by hand: size 12, stride 2, start -5."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, dilation=2, padding=2)

    def forward(self, x):
        return self.conv2(F.max_pool2d(torch.relu(self.conv1(x)), 2))


class StridedAverage(nn.Module):
    """conv5 stride 2 -> avgpool 3 stride 2 pad 1 -> conv1 stride 2; by hand: size 9, stride 8, start -2."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 5, stride=2)
        self.conv2 = nn.Conv2d(4, 4, 1, stride=2)

    def forward(self, x):
        return self.conv2(F.avg_pool2d(self.conv1(x), 3, stride=2, padding=1))


class Branches(nn.Module):
    """concat(conv3, conv5) -> conv3 stride 2, plus a residual avgpool branch; by hand: size 7, stride 2, start -3."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 5, padding=2)
        self.down = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.skip = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        main = self.down(torch.cat([self.a(x), self.b(x)], dim=1))
        return main + F.avg_pool2d(self.skip(x), 2)


class PadSlice(nn.Module):
    """pad (2 top/left, 1 bottom/right) -> conv3 -> [1::2, 1::2] -> conv3; by hand: size 7, stride 2, start -1."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.conv1(F.pad(x, (2, 1, 2, 1)))
        return self.conv2(y[:, :, 1::2, 1::2])


class Upsampled(nn.Module):
    """conv3 stride 2 -> upsample x2 (nearest or bilinear) -> conv3 pad 1."""

    def __init__(self, mode: str = "nearest"):
        super().__init__()
        self.mode = mode
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = F.interpolate(self.conv1(x), scale_factor=2, mode=self.mode,
                          align_corners=False if self.mode == "bilinear" else None)
        return self.conv2(y)


class Transposed(nn.Module):
    """conv3 stride 2 pad 1 -> ConvTranspose k4 stride 2 pad 1 -> conv3 pad 1."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(self.up(self.conv1(x)))


class ChannelsLast(nn.Module):
    """NHWC input; conv3 stride 2 pad 1 -> NHWC relu (the layer) -> conv3 pad 1; by hand: 3/2/-1 then 7/2/-3."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv1(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return self.conv2(y.permute(0, 3, 1, 2))


class Gated(nn.Module):
    """conv3 -> squeeze-excitation gate -> conv3: global, or size 5 when gates are skipped."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = nn.Conv2d(4, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y * self.gate(y.mean(dim=(2, 3), keepdim=True)))  # linear: no saturation


class Summed(nn.Module):
    """The net under test followed by a sum, so its last conv is an inner tensor with inferred shapes."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).sum(dim=(1, 2, 3))


def exported(net: nn.Module, tmp_path, shape=(1, 3, 32, 32)) -> tuple[Model, str]:
    """The net exported (positive weights) and the name of its output tensor (the sum's input)."""
    path = helpers.export(Summed(positive(net)), tmp_path / f"{type(net).__name__}.onnx", shape=shape)
    model = Model.load(path)
    return model, model.producers["scores"].input[0]


def empirical_boxes(model: Model, layer: str, channel: int = 0) -> np.ndarray:
    """(h, w, 4) boxes (top, left, bottom, right; exclusive) of the input pixels that move each position."""
    nhwc = model.tensors[model.inputs[0].name].layout == "NHWC"
    shape = model.inputs[0].shape
    height, width = (shape[1], shape[2]) if nhwc else (shape[2], shape[3])
    base = np.random.default_rng(0).uniform(0, 1, (height, width, 3)).astype(np.float32)
    batch = np.repeat(base[None], height * width + 1, axis=0)
    pixels = np.arange(height * width)
    batch[1 + pixels, pixels // width, pixels % width, :] += 1000.0
    x = batch if nhwc else batch.transpose(0, 3, 1, 2)
    value = Runtime(model.proto, batch_size=256).run(np.ascontiguousarray(x), [layer])[layer]
    maps = as_maps(value, model.tensors[layer])[:, channel]
    moved = np.abs(maps[1:] - maps[0]) > 1e-4 * (1 + np.abs(maps[0]).max())
    moved = moved.reshape(height, width, *maps.shape[1:])
    rows, cols = moved.any(axis=1), moved.any(axis=0)  # (H, h, w), (W, h, w)
    assert rows.any(axis=0).all(), "every position must be moved by some pixel"
    top, bottom = rows.argmax(axis=0), height - rows[::-1].argmax(axis=0)
    left, right = cols.argmax(axis=0), width - cols[::-1].argmax(axis=0)
    return np.stack([top, left, bottom, right], axis=-1)


def computed_boxes(model: Model, layer: str, skip_gates: bool = False) -> np.ndarray:
    field = receptive_field(model, layer, skip_gates)
    h, w = model.tensors[layer].hw
    return np.array([[field.box(i, j) for j in range(w)] for i in range(h)])


EXACT = [  # (net, expected (size, stride, start) of the last conv, same on both axes)
    (ConvPoolDilated, (12, 2, -5)),
    (StridedAverage, (9, 8, -2)),
    (Branches, (7, 2, -3)),
    (PadSlice, (7, 2, -1)),
]


@pytest.mark.parametrize("net, expected", EXACT, ids=[n.__name__ for n, _ in EXACT])
def test_conv_pool_paths_match_hand_values_and_empirical_exactly(net, expected, tmp_path):
    """Tolerance: none; integer boxes equal at every position."""
    model, last = exported(net(), tmp_path)
    field = receptive_field(model, last)
    assert field.size == (expected[0],) * 2 and field.stride == (expected[1],) * 2
    assert field.start == (expected[2],) * 2
    np.testing.assert_array_equal(computed_boxes(model, last), empirical_boxes(model, last))


def test_intermediate_layers_match_hand_values(tmp_path):
    """conv3 pad 1: size 3, start -1; after maxpool 2: size 4, stride 2, start -1 (exact)."""
    model, _ = exported(ConvPoolDilated(), tmp_path)
    fields = receptive_fields(model)
    first = fields[next(t.name for t in model.layers if t.op_type == "Conv")]
    pool = fields[next(t.name for t in model.layers if t.op_type == "MaxPool")]
    assert (first.size, first.stride, first.start) == ((3, 3), (1, 1), (-1, -1))
    assert (pool.size, pool.stride, pool.start) == ((4, 4), (2, 2), (-1, -1))
    for layer in (first, pool):
        assert fields[model.inputs[0].name].size == (1, 1) and not layer.is_global


UPSAMPLING = [  # textbook field of the last conv: a cover of every position's exact field
    (lambda: Upsampled("nearest"), (6, 1, -3)),   # asymmetric floor: output i reads i // 2
    (lambda: Upsampled("bilinear"), (8, 1, -4)),  # half-pixel: i even reads i/2 - 1, i/2; odd: (i-1)/2, (i+1)/2
    (Transposed, (8, 1, -4)),
]


@pytest.mark.parametrize("net, expected", UPSAMPLING, ids=["nearest", "bilinear", "conv-transpose"])
def test_upsampling_paths_match_empirical_boxes_exactly(net, expected, tmp_path):
    """Exact boxes (tolerance none); the textbook field covers them and matches the hand values."""
    model, last = exported(net(), tmp_path)
    computed, empirical = computed_boxes(model, last), empirical_boxes(model, last)
    np.testing.assert_array_equal(computed, empirical)
    field = receptive_field(model, last)
    assert (field.size, field.stride, field.start) == ((expected[0],) * 2, (expected[1],) * 2, (expected[2],) * 2)
    covers = np.array([[field.cover(i, j) for j in range(32)] for i in range(32)])
    assert (covers[..., :2] <= empirical[..., :2]).all() and (covers[..., 2:] >= empirical[..., 2:]).all()


def test_nhwc_layers_use_their_layout(tmp_path):
    """A channels-last tensor keeps rows/columns; exact boxes at both layers."""
    model, last = exported(ChannelsLast(), tmp_path, shape=(1, 32, 32, 3))
    relu = next(t for t in model.layers if t.op_type == "Relu")
    assert relu.layout == "NHWC"
    field = receptive_field(model, relu.name)
    assert (field.size, field.stride, field.start) == ((3, 3), (2, 2), (-1, -1))
    assert receptive_field(model, last).size == (7, 7)
    for layer in (relu.name, last):
        np.testing.assert_array_equal(computed_boxes(model, layer), empirical_boxes(model, layer))


def test_gates_make_the_field_global_unless_skipped(tmp_path):
    """Squeeze-excitation: every pixel moves every position (global); skip_gates keeps conv3 o conv3 (size 5)."""
    model, last = exported(Gated(), tmp_path)
    assert receptive_field(model, last).is_global
    full = np.broadcast_to(np.array([0, 0, 32, 32]), (32, 32, 4))
    np.testing.assert_array_equal(computed_boxes(model, last), full)
    np.testing.assert_array_equal(empirical_boxes(model, last), full)
    local = receptive_field(model, last, skip_gates=True)
    assert (local.size, local.stride, local.start) == ((5, 5), (1, 1), (-2, -2))
