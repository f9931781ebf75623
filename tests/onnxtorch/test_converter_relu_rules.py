"""relu_rule("plain" | "guided" | "deconvnet") on a hand-weighted net with hand-computed input gradients.

Net: y = sum(v * act(W x)) with W = [[1, 2], [-1, 1], [2, -1], [1, 0]], x = [3, 2], so
W x = [7, -1, 4, 3], and v = [1, 1, -1, 1] flips the sign of the gradient reaching unit 3.
With g = v the gradient arriving at the activation and mask = act'(Wx):
  plain      dx = W^T (g * mask)
  guided     dx = W^T (relu(g) * mask)      (Springenberg et al.)
  deconvnet  dx = W^T relu(g)               (Zeiler & Fergus; ignores the forward)
Relu:      mask [1, 0, 1, 1]       -> plain [0, 3],     guided [2, 2], deconvnet [1, 3]
Clip 0..6: mask [0, 0, 1, 1] (7>6) -> plain [-1, 1],    guided [1, 0], deconvnet [1, 3]
LeakyRelu(0.1) / PRelu(0.1): mask [1, .1, 1, 1]
                                    -> plain [-0.1, 3.1], guided [1.9, 2.1], deconvnet [1, 3]
Tolerance: exact up to float32 rounding (1e-6).
"""
from __future__ import annotations

import onnx
import pytest
import torch

import onnxtorch

ACTIVATIONS = {
    "Relu": ("r = Relu(h)", 13),
    "Clip": ("r = Clip(h, lo, hi)", 13),
    "Clip-6": ("r = Clip<min=0.0, max=6.0>(h)", 6),
    "LeakyRelu": ("r = LeakyRelu<alpha=0.1>(h)", 13),
    "PRelu": ("r = PRelu(h, slope)", 13),
}
EXPECTED = {
    "Relu": {"plain": [0, 3], "guided": [2, 2], "deconvnet": [1, 3]},
    "Clip": {"plain": [-1, 1], "guided": [1, 0], "deconvnet": [1, 3]},
    "LeakyRelu": {"plain": [-0.1, 3.1], "guided": [1.9, 2.1], "deconvnet": [1, 3]},
}
EXPECTED["Clip-6"] = EXPECTED["Clip"]
EXPECTED["PRelu"] = EXPECTED["LeakyRelu"]


def hand_net(activation: str) -> onnxtorch.OnnxModule:
    body, opset = ACTIVATIONS[activation]
    reduce = "y = ReduceSum<keepdims=0>(m)" if opset >= 13 else "y = ReduceSum<keepdims=0, axes=[0, 1]>(m)"
    text = f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g (float[1, 2] x) => (float y) <float[4, 2] W = {{1, 2, -1, 1, 2, -1, 1, 0}}, float[1, 4] v = {{1, 1, -1, 1}},
                                    float lo = {{0.0}}, float hi = {{6.0}}, float[1] slope = {{0.1}}> {{
        h = Gemm<transB=1>(x, W)
        {body}
        m = Mul(r, v)
        {reduce}
    }}"""
    return onnxtorch.to_torch(onnx.parser.parse_model(text))


def input_gradient(module: onnxtorch.OnnxModule) -> list[float]:
    x = torch.tensor([[3.0, 2.0]], requires_grad=True)
    module(x).backward()
    return x.grad[0].tolist()


@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_relu_rule_gradient(activation, rule):
    module = hand_net(activation)
    with module.relu_rule(rule):
        grad = input_gradient(module)
    assert grad == pytest.approx(EXPECTED[activation][rule], abs=1e-6)


def test_plain_is_ordinary_autograd_and_the_rule_is_restored():
    module = hand_net("Relu")
    assert input_gradient(module) == pytest.approx(EXPECTED["Relu"]["plain"], abs=1e-6)
    with module.relu_rule("guided"):
        with module.relu_rule("deconvnet"):
            assert input_gradient(module) == pytest.approx(EXPECTED["Relu"]["deconvnet"], abs=1e-6)
        assert input_gradient(module) == pytest.approx(EXPECTED["Relu"]["guided"], abs=1e-6)
    assert input_gradient(module) == pytest.approx(EXPECTED["Relu"]["plain"], abs=1e-6)


def test_rules_keep_the_forward_and_leave_other_clips_alone():
    module = hand_net("Clip")
    x = torch.tensor([[3.0, 2.0]])
    with module.relu_rule("guided"):
        assert float(module(x)) == pytest.approx(6 + 0 - 4 + 3)
    hardtanh = onnxtorch.to_torch(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 13]>
        g (float[3] x) => (float y) <float lo = {-1.0}, float hi = {1.0}> { c = Clip(x, lo, hi)
        y = ReduceSum<keepdims=0>(c) }"""))
    xs = torch.tensor([-2.0, 0.5, -0.5], requires_grad=True)
    with hardtanh.relu_rule("guided"):  # a Clip whose lower bound is not 0 is not Relu-like
        (-hardtanh(xs)).backward()
    assert xs.grad.tolist() == [0.0, -1.0, -1.0]


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="guided"):
        with hand_net("Relu").relu_rule("smooth"):
            pass


@pytest.mark.parametrize("activation", ["Clip", "Clip-6"])
@pytest.mark.parametrize("rule,upper,expected", [
    ("guided", None, [1, 0]), ("guided", "block", [1, 0]), ("guided", "pass", [2, 2]),
    ("deconvnet", None, [1, 3]), ("deconvnet", "pass", [1, 3]), ("deconvnet", "block", [0, 1])])
def test_clip_upper_bound_rule(activation, rule, upper, expected):
    """Unit 0 is saturated (7 > 6): "block" drops its gradient (mask 0 there), "pass" treats it as a ReLU unit;
    by default guided blocks and deconvnet passes. Exact up to 1e-6."""
    module = hand_net(activation)
    with module.relu_rule(rule, clip_upper=upper):
        assert input_gradient(module) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="clip_upper must be one of block, pass"):
        with module.relu_rule(rule, clip_upper="open"):
            pass
