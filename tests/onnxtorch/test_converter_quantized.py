"""int8 models from onnxruntime's own quantiser convert: a small conv net built in torch, quantised dynamically
(ConvInteger, MatMulInteger, DynamicQuantizeLinear) and statically in QDQ format (QuantizeLinear/DequantizeLinear
around float Conv/Gemm).

Tolerance: the QDQ model's output within one quantisation step of its output scale (the last DequantizeLinear's);
the dynamic model's output (float, not requantised) within 1e-4 of onnxruntime's maximum. The input gradient
(straight-through estimator) is finite, non-zero, and points the way the float model's does (cosine >= 0.98).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

import onnxtorch
from converter_oracle import cosine, run
from test_converter_ops import model


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()


class Calibration(CalibrationDataReader):
    """Four seeded batches of noise."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.batches = iter([{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """(float net, {"dynamic": path, "static": path})."""
    folder = tmp_path_factory.mktemp("int8")
    net = small_net()
    float_path = folder / "float.onnx"
    torch.onnx.export(net, (torch.randn(2, 3, 16, 16),), str(float_path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    quantize_dynamic(str(float_path), str(folder / "dynamic.onnx"), weight_type=QuantType.QInt8)
    quantize_static(str(float_path), str(folder / "static.onnx"), Calibration(), quant_format=QuantFormat.QDQ)
    return net, {"dynamic": folder / "dynamic.onnx", "static": folder / "static.onnx"}


def output_step(proto: onnx.ModelProto) -> float:
    """The scale of the DequantizeLinear that produces the graph output."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    node = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    assert node.op_type == "DequantizeLinear"
    return float(inits[node.input[1]])


@pytest.mark.parametrize("kind,ops", [("dynamic", {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}),
                                      ("static", {"QuantizeLinear", "DequantizeLinear"})])
def test_int8_model_matches_onnxruntime(quantised, kind, ops):
    _, paths = quantised
    proto = onnx.load(str(paths[kind]))
    assert ops <= {n.op_type for n in proto.graph.node}
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    expected = run(proto, [x])["y"]
    with torch.no_grad():
        y = onnxtorch.to_torch(proto)(torch.from_numpy(x)).numpy()
    diff = float(np.abs(y - expected).max())
    if kind == "static":
        assert diff <= output_step(proto) * 1.0001
    else:
        assert diff <= 1e-4 * float(np.abs(expected).max())


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_int8_model_has_a_straight_through_gradient(quantised, kind):
    net, paths = quantised
    module = onnxtorch.to_torch(str(paths[kind]))
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32))
    x_q = x.clone().requires_grad_()
    grad = torch.autograd.grad(module(x_q)[:, 1].sum(), x_q)[0]
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    x_f = x.clone().requires_grad_()
    reference = torch.autograd.grad(net(x_f)[:, 1].sum(), x_f)[0]
    assert cosine(grad, reference) >= 0.98


def test_quantise_dequantise_gradient_is_one_inside_the_range_and_zero_where_saturated():
    """Rounding passes the gradient unchanged; saturation (uint8 zero point 0 clips negatives, like the ReLU
    it often replaces) stops it, judged on the rounded value as torch's fake_quantize does (-0.04 rounds to 0)."""
    proto = model(13, "q = QuantizeLinear(x, s, z)\n y = DequantizeLinear(q, s, z)", {"x": np.zeros(6, np.float32)},
                  "float y", "float s = {0.1}, uint8 z = {0}")
    x = torch.tensor([-1.0, -0.04, 0.04, 1.23, 25.4, 30.0], requires_grad=True)
    y = onnxtorch.to_torch(proto)(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.0, 0.0, 1.2, 25.4, 25.5]))
    grad = torch.autograd.grad(y.sum(), x)[0]
    assert torch.equal(grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 0.0]))
