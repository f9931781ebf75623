"""Tiny models built in plain torch and exported at test time, shared by the onnxplain tests."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

REGION = (8, 16, 8, 16)  # rows 8..16, cols 8..16 of a 32x32 input: the only pixels RegionNet's score sees


class RegionNet(nn.Module):
    """A GAP classifier (3 classes) whose scores depend only on the input pixels in REGION.

    conv (3x3, pad 1) -> relu -> conv (3x3, stride 2, pad 1) -> relu -> x spatial mask -> GAP -> linear.
    The mask keeps the 16x16 layer positions whose receptive fields lie inside REGION, so every
    method's peak must fall in REGION.
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.conv1.bias.fill_(0.1)
            self.conv2.bias.fill_(0.1)
        mask = torch.zeros(1, 1, 16, 16)
        r0, r1, c0, c1 = REGION
        mask[..., r0 // 2 + 1:r1 // 2 - 1, c0 // 2 + 1:c1 // 2 - 1] = 1  # receptive fields (7x7) stay inside
        self.register_buffer("mask", mask)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x)) * self.mask
        return self.fc(x.mean(dim=(2, 3)))


class NHWCNet(nn.Module):
    """RegionNet taking NHWC input (as tf2onnx models do): a transpose in front."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.inner = RegionNet(seed)

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2))


def export(model: nn.Module, path: str | Path, shape=(1, 3, 32, 32), opset: int = 17, dynamo: bool = False,
           input_name: str = "input") -> Path:
    """Export with a dynamic batch (legacy exporter by default); returns the path."""
    model.eval()
    path = Path(path)
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(model, (torch.zeros(shape),), str(path), dynamo=True, input_names=[input_name],
                          dynamic_shapes=({0: batch},))
    else:
        torch.onnx.export(model, torch.zeros(shape), str(path), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=["scores"],
                          dynamic_axes={input_name: {0: "batch"}, "scores": {0: "batch"}})
    return path


def random_images(n: int = 2, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 images of noise, seeded."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """(row, col) of the maximum."""
    return tuple(int(v) for v in np.unravel_index(np.argmax(heatmap), heatmap.shape))


def in_region(point: tuple[int, int], region=REGION) -> bool:
    r0, r1, c0, c1 = region
    return r0 <= point[0] < r1 and c0 <= point[1] < c1


@functools.lru_cache(maxsize=None)
def region_class_images() -> tuple[np.ndarray, ...]:
    """One 32x32 image per RegionNet class with positive evidence for it in REGION (gradient ascent on the
    class's margin, seeded). On noise, RegionNet's region holds mostly negative evidence for every class, and
    methods that average many pixels at once (RISE) then have no positive region to find."""
    net = RegionNet().eval()
    images = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny net: extra threads only contend (4x slower on a busy 2-core runner)
    for c in range(3):
        torch.manual_seed(c)
        z = torch.randn(1, 3, 32, 32, requires_grad=True)
        opt = torch.optim.Adam([z], lr=0.1)
        others = [k for k in range(3) if k != c]
        for _ in range(60):
            logits = net(torch.sigmoid(z))[0]
            loss = torch.logsumexp(logits[others], 0) - logits[c]
            opt.zero_grad()
            loss.backward()
            opt.step()
        images.append((torch.sigmoid(z)[0].permute(1, 2, 0).detach().numpy() * 255).round().astype(np.uint8))
    torch.set_num_threads(threads)
    return tuple(images)
