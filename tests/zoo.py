"""A zoo of tiny image models in plain torch, exported to ONNX three ways, for converter and method tests.

Each model is a miniature of a real family (ResNet, MobileNetV2/V3, VGG, DenseNet,
EfficientNet, ConvNeXt, ViT): same layer types and wiring, few channels, 32x32
input, seeded random weights and randomised BatchNorm statistics (so folding BN
into Conv is not an identity), in eval mode.

    model = zoo.build("resnet")                # nn.Module, eval mode, seeded
    zoo.export(model, path, "legacy17")       # "legacy13" | "legacy17" | "dynamo"
    def test_x(zoo_exports): zoo_exports.path("resnet", "dynamo")   # session fixture, exports once

Exports have one input "input" (N x 3 x 32 x 32, dynamic batch) and one output "logits".
The dynamo export (opset 18+) keeps its weights in `<name>.onnx.data` beside the model.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
KINDS = ("legacy13", "legacy17", "dynamo")


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias) + BatchNorm, the unit every CNN here is built from."""
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-bn, identity or 1x1 projection shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-like: stem, max pool, two stages of basic blocks, global average pool, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear project, residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*conv_bn(cin, mid, 1), nn.ReLU6(), *conv_bn(mid, mid, 3, stride, groups=mid),
                                  nn.ReLU6(), *conv_bn(mid, cout, 1))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2-like: depthwise separable inverted residuals with ReLU6 (Clip in ONNX)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*conv_bn(3, 8, 3, 2), nn.ReLU6(), InvertedResidual(8, 8, 1),
                                      InvertedResidual(8, 16, 2), InvertedResidual(16, 16, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, NUM_CLASSES))

    def forward(self, x):
        return self.head(self.features(x))


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global pool, 1x1 reduce, activation, 1x1 expand, gate, channel-wise scale."""

    def __init__(self, channels: int, reduced: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MobileNetV3Block(nn.Module):
    """MobileNetV3 bneck: expand (hardswish), depthwise (hardswish), SE with hardsigmoid, project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 3):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*conv_bn(cin, mid, 1), nn.Hardswish(), *conv_bn(mid, mid, 3, stride, groups=mid),
                                  nn.Hardswish(), SqueezeExcite(mid, max(mid // 4, 4), nn.ReLU, nn.Hardsigmoid),
                                  *conv_bn(mid, cout, 1))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3-like: hardswish, squeeze-excite with hardsigmoid, Linear-Hardswish-Linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*conv_bn(3, 8, 3, 2), nn.Hardswish(), MobileNetV3Block(8, 8, 1),
                                      MobileNetV3Block(8, 16, 2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32), nn.Hardswish(),
                                  nn.Dropout(0.2), nn.Linear(32, NUM_CLASSES))

    def forward(self, x):
        return self.head(self.features(x))


class VGG(nn.Module):
    """VGG-like: conv-relu stacks and max pools, flatten, Linear-ReLU-Dropout classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5),
                                        nn.Linear(32, NUM_CLASSES))

    def forward(self, x):
        return self.classifier(self.features(x))


class DenseLayer(nn.Module):
    """DenseNet layer: BN-ReLU-1x1 conv-BN-ReLU-3x3 conv, output concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
                                  nn.BatchNorm2d(2 * growth), nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, padding=1,
                                                                                   bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """DenseNet-like: dense blocks (Concat), transition with 2x2 average pooling, BN-ReLU head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), DenseLayer(8, 4), DenseLayer(12, 4),
                                      nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False),
                                      nn.AvgPool2d(2, 2), DenseLayer(8, 4), nn.BatchNorm2d(12), nn.ReLU())
        self.classifier = nn.Linear(12, NUM_CLASSES)

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class MBConv(nn.Module):
    """EfficientNet MBConv: expand (SiLU), depthwise (SiLU), SE with SiLU/sigmoid, project, residual."""

    def __init__(self, cin: int, cout: int, stride: int, k: int = 3, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*conv_bn(cin, mid, 1), nn.SiLU(), *conv_bn(mid, mid, k, stride, groups=mid),
                                  nn.SiLU(), SqueezeExcite(mid, max(cin // 4, 2), nn.SiLU, nn.Sigmoid),
                                  *conv_bn(mid, cout, 1))

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class EfficientNet(nn.Module):
    """EfficientNet-like: SiLU stem, MBConv blocks with 3x3 and 5x5 depthwise kernels, SE."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*conv_bn(3, 8, 3, 2), nn.SiLU(), MBConv(8, 8, 1), MBConv(8, 16, 2, k=5),
                                      *conv_bn(16, 32, 1), nn.SiLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, NUM_CLASSES))

    def forward(self, x):
        return self.head(self.features(x))


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over channels of an NCHW tensor, done as ConvNeXt does: permute, LayerNorm, permute back."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7, channels-last LayerNorm, Linear-GELU-Linear, layer scale, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt-like: 4x4 patchify stem with LayerNorm, blocks, LayerNorm + 2x2 downsampling, pooled head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), ChannelsFirstLayerNorm(8))
        self.stage1 = ConvNeXtBlock(8)
        self.down = nn.Sequential(ChannelsFirstLayerNorm(8), nn.Conv2d(8, 16, 2, 2))
        self.stage2 = ConvNeXtBlock(16)
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.head = nn.Linear(16, NUM_CLASSES)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean((2, 3))))


class Attention(nn.Module):
    """Multi-head self-attention written out: qkv Linear, reshape, MatMul, Softmax, MatMul, projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: LayerNorm-attention and LayerNorm-MLP(GELU), both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Small ViT: 8x8 patch conv, class token, learned position embedding, two blocks, head on the class token."""

    def __init__(self, dim: int = 32, heads: int = 2, depth: int = 2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (INPUT_SHAPE[1] // 8) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet": ResNet, "mobilenet_v2": MobileNetV2, "mobilenet_v3": MobileNetV3, "vgg": VGG,
    "densenet": DenseNet, "efficientnet": EfficientNet, "convnext": ConvNeXt, "vit": ViT,
}


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.1)


def build(name: str, seed: int = 0) -> nn.Module:
    """The zoo model `name` with seeded weights and randomised BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():
        randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def sample(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded random input batch (standard normal, like a normalised image)."""
    return torch.randn((batch,) + INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def photo(size: int = INPUT_SHAPE[1]) -> torch.Tensor:
    """skimage's chelsea (a cat), resized to size x size and ImageNet-normalised, as a 1 x 3 x size x size batch."""
    from skimage import data, transform
    image = transform.resize(data.chelsea(), (size, size), anti_aliasing=True).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(((image - mean) / std).transpose(2, 0, 1).copy())[None]


def export(model: nn.Module, path: str | Path, kind: str) -> Path:
    """Export `model` to `path` with the legacy exporter at opset 13 / 17 or the dynamo exporter (opset 18+,
    weights in `<path>.data`), one input "input" with a dynamic batch and one output "logits"."""
    path = Path(path)
    x = sample(2)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if kind in ("legacy13", "legacy17"):
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=int(kind[-2:]),
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        elif kind == "dynamo":
            torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=True,
                              verbose=False)
        else:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return path


class ZooExports:
    """Zoo models built and exported once per test session, on demand, into one folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._models: dict[str, nn.Module] = {}
        self._paths: dict[tuple[str, str], Path] = {}

    def model(self, name: str) -> nn.Module:
        """The (cached) torch model `name`."""
        if name not in self._models:
            self._models[name] = build(name)
        return self._models[name]

    def path(self, name: str, kind: str) -> Path:
        """The ONNX file of model `name` exported as `kind` (exported on first use)."""
        if (name, kind) not in self._paths:
            self._paths[name, kind] = export(self.model(name), self.folder / f"{name}_{kind}.onnx", kind)
        return self._paths[name, kind]


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory) -> ZooExports:
    """Session-wide ZooExports in a temporary folder (import this fixture into a conftest.py to use it)."""
    return ZooExports(tmp_path_factory.mktemp("zoo"))
