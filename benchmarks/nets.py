"""What the benchmark scripts share: ResNet layouts in plain torch (torchvision does not import beside the
project's torch), the ONNX export they all use, and a median timer. Weights are seeded by the caller."""
from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet-18 basic block: two 3x3 convs with batch norms, projection shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()  # cout: this block's width (the `mid` of a bottleneck, no expansion)
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + self.down(x))


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels), batch norms, projection where needed."""

    def __init__(self, cin: int, mid: int, stride: int):
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                  nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                  nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class ResNet(nn.Module):
    """torchvision's ResNet layout: stem, layer1..layer4 of `block`s (`counts` each, base width `width`),
    global average pooling, fc to 1000 classes. Weights are drawn top to bottom, as torchvision does."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], counts: tuple[int, ...], width: int = 64):
        super().__init__()
        expansion = 4 if block is Bottleneck else 1
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, count in enumerate(counts):
            mid = width * 2 ** i
            stages.append(nn.Sequential(*[block(cin if b == 0 else expansion * mid, mid, 2 if b == 0 and i else 1)
                                          for b in range(count)]))
            cin = expansion * mid
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, 1000)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18() -> ResNet:
    """ResNet-18: 2-2-2-2 basic blocks, 64..512 channels."""
    return ResNet(BasicBlock, (2, 2, 2, 2)).eval()


def resnet50(width: int = 64, counts: tuple[int, ...] = (3, 4, 6, 3)) -> ResNet:
    """ResNet-50 with base width `width` (64: the real one, 2048 channels after layer4)."""
    return ResNet(Bottleneck, counts, width).eval()


def export(model: nn.Module, path: Path, size: int = 224) -> Path:
    """Legacy exporter, opset 17, dynamic batch, input 'input' and output 'logits'."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds of `repeats` calls after one warm-up call (`sync` waits for a GPU)."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        # constant reshapes (no Shape of x): OpenVINO-XAI's ViT recipro-cam wants x read by the norm and the add only
        head = self.qkv.in_features // self.heads
        qkv = self.qkv(self.norm1(x)).unflatten(-1, (3, self.heads, head)).permute(2, 0, 3, 1, 4)
        attention = (qkv[0] @ qkv[1].transpose(-2, -1) * head ** -0.5).softmax(-1)
        x = x + self.proj((attention @ qkv[2]).transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT-B/16 layout: 16x16 patches, class token, learned positions, 12 blocks of width 768, final norm,
    linear head on the class token."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, classes: int = 1000, size: int = 224):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, 16)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (size // 16) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def vit_b16() -> ViT:
    """A ViT-B/16-shaped network with seeded random weights (eval mode)."""
    torch.manual_seed(0)
    return ViT().eval()
