"""Real shipped models: forward parity with onnxruntime, and input gradients against the torch original.

Tolerances: forward within 1e-4 of onnxruntime (max abs diff / max abs value) for
every output; input-gradient cosine with the original torch model >= 0.999.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import onnxtorch
import real_models
import zoo
from converter_oracle import cosine, relative_error, run


def photo(height: int, width: int) -> torch.Tensor:
    """skimage's chelsea resized to height x width, scaled to [-1, 1], as a 1 x 3 x H x W batch."""
    from skimage import data, transform
    image = transform.resize(data.chelsea(), (height, width), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy((image * 2 - 1).transpose(2, 0, 1).copy())[None]


def assert_forward_matches(path, x: torch.Tensor, module: onnxtorch.OnnxModule | None = None) -> None:
    module = module or onnxtorch.to_torch(path)
    with torch.no_grad():
        out = module(x)
    outs = out if isinstance(out, tuple) else (out,)
    expected = run(path, [x])
    for name, value in zip(module.output_names, outs):
        assert relative_error(value, expected[name]) <= 1e-4, name


def test_efficientnet_lite0():
    """Legacy export: Pad with computed pads (folded at build time), Clip as ReLU6."""
    module = onnxtorch.to_torch(real_models.EFFICIENTNET_LITE0)
    assert_forward_matches(real_models.EFFICIENTNET_LITE0, zoo.photo(224), module)
    assert_forward_matches(real_models.EFFICIENTNET_LITE0, torch.randn(2, 3, 224, 224), module)
    clips = [s for s in module._steps if s.node.op_type == "Clip"]
    assert clips and all(s.rule_fn is not None for s in clips)  # every ReLU6 follows relu rules
    x = zoo.photo(224).requires_grad_()
    with module.relu_rule("guided"):
        module(x).max().backward()
    assert x.grad.abs().sum() > 0


def test_ppocr_direction_classifier():
    """Paddle export, opset 11: weights in Constant nodes, HardSigmoid, Softmax flattened at axis 1."""
    path = real_models.ppocr_cls()
    module = onnxtorch.to_torch(path)
    assert len(list(module.parameters())) > 100 and not any(p.requires_grad for p in module.parameters())
    assert_forward_matches(path, photo(48, 192), module)
    assert_forward_matches(path, torch.rand(2, 3, 48, 192) * 2 - 1, module)


@pytest.mark.parametrize("name,sizes", [("onet", [(48, 48)]), ("pnet", [(48, 48), (37, 61)])])
def test_mtcnn(name, sizes):
    """MTCNN nets (PRelu, MaxPool ceil_mode, Softmax, several outputs): parity and gradients vs facenet-pytorch."""
    path = real_models.mtcnn_onnx(name)
    module = onnxtorch.to_torch(path)
    original = real_models.mtcnn_net(name)
    for height, width in sizes:
        x = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(height)) * 2 - 1
        assert_forward_matches(path, x, module)
        for index in range(len(module.output_names)):
            grads = []
            for net in (module, original):
                xg = x.clone().requires_grad_()
                out = net(xg)[index]
                weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(index))
                (out * weights).sum().backward()
                grads.append(xg.grad)
            assert cosine(*grads) >= 0.999, (height, width, index)
