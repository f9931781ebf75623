"""Every zoo model, exported three ways, converted and checked against onnxruntime and the torch original.

Tolerances: forward and every intermediate tensor within 1e-4 of onnxruntime
(max abs diff / max abs of onnxruntime's value; intermediates floored at 1e-3 of
scale); the input gradient's cosine with the original torch model's >= 0.999.
"""
from __future__ import annotations

import pytest
import torch

import onnxtorch
import zoo
from converter_oracle import cosine, relative_error, run

CASES = [(name, kind) for name in zoo.MODELS for kind in zoo.KINDS]
PHOTO_CASES = {("resnet", "legacy17"), ("mobilenet_v3", "dynamo"), ("vit", "legacy13"), ("convnext", "legacy17")}


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_zoo_model(zoo_exports, name, kind):
    path = zoo_exports.path(name, kind)
    module = onnxtorch.to_torch(path)
    x = zoo.sample(2, seed=1)
    constants = set(module.constant_names)
    taps = [n for n in module.tensor_names if n not in constants and n not in module.output_names]

    # forward and every intermediate tensor equal onnxruntime's
    expected = run(path, [x], extra_outputs=taps)
    with torch.no_grad():
        (logits,), values = module(x, taps=taps)
    assert relative_error(logits, expected["logits"]) <= 1e-4
    worst = max(((relative_error(values[n], expected[n], floor=1e-3), n) for n in taps), default=(0.0, None))
    assert worst[0] <= 1e-4, f"tap {worst[1]} differs from onnxruntime by {worst[0]:.2e}"

    # the input gradient equals the original torch model's
    original = zoo_exports.model(name)
    weights = torch.randn(2, zoo.NUM_CLASSES, generator=torch.Generator().manual_seed(2))
    grads = []
    for net in (module, original):
        xg = x.clone().requires_grad_()
        (net(xg) * weights).sum().backward()
        grads.append(xg.grad)
    assert cosine(*grads) >= 0.999

    if (name, kind) in PHOTO_CASES:  # a real image, not just noise
        image = zoo.photo()
        with torch.no_grad():
            assert relative_error(module(image), run(path, [image])["logits"]) <= 1e-4

