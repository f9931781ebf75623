"""Small detector graphs built here (If, Loop, NonMaxSuppression, RoiAlign around a conv backbone) convert with
parity against onnxruntime and give a gradient to the input image.

Tolerance: float outputs within 1e-5 of onnxruntime (max abs diff / max abs value), the selected indices equal;
input gradients finite and non-zero, and equal (1e-4) to central finite differences of the converted forward.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnxtorch
from converter_oracle import relative_error, run

RNG = np.random.default_rng(7)


def floats(values: np.ndarray) -> str:
    return ", ".join(f"{v:.6f}" for v in values.reshape(-1))


def detector(min_score: float = 0.2, opset: int = 16) -> onnx.ModelProto:
    """Conv backbone -> RoiAlign over fixed anchors -> per-box scores -> NonMaxSuppression; an If keeps the
    pooled features of the kept boxes or zeros when none is kept; a Loop sums the kept boxes' features,
    reading the outer-scope pooled tensor and the selection by name."""
    anchors = np.array([[0, 0, 8, 8], [1, 1, 9, 9], [8, 8, 15, 15], [4, 0, 12, 7], [0, 9, 7, 15], [2, 2, 6, 6]],
                       np.float32)
    weight = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    text = f'''<ir_version: 8, opset_import: ["" : {opset}]>
det (float[1,3,16,16] x) => (float total, int64 selected, float kept) <
    float[4,3,3,3] w = {{{floats(weight)}}}, float[6,4] anchors = {{{floats(anchors)}}},
    int64[6] batch = {{0, 0, 0, 0, 0, 0}}, int64[1] limit = {{3}}, float[1] iou = {{0.4}},
    float[1] min_score = {{{min_score}}}, int64[3] score_shape = {{1, 1, 6}}, int64[1] box_col = {{2}},
    int64[1] one = {{1}}, int64[1] zero = {{0}}, int64[3] yx = {{1, 0, 3}}, float[4,2,2] zeros = {{{floats(np.zeros(16))}}}
> {{
    f = Conv<pads=[1, 1, 1, 1]>(x, w)
    a = Relu(f)
    pooled = RoiAlign<output_height=2, output_width=2, sampling_ratio=2, spatial_scale=1.0>(a, anchors, batch)
    m = ReduceMean<axes=[1, 2, 3], keepdims=0>(pooled)
    s = Sigmoid(m)
    scores = Reshape(s, score_shape)
    boxes_yx = Unsqueeze(anchors, zero)
    selected = NonMaxSuppression(boxes_yx, scores, limit, iou, min_score)
    picked2 = Gather<axis=1>(selected, box_col)
    picked = Squeeze(picked2, one)
    n = Shape(picked)
    count = Squeeze(n, zero)
    any = Greater(count, zero)
    any1 = Squeeze(any, zero)
    kept = If(any1) <then_branch = t () => (float g) {{ g = Gather<axis=0>(pooled, picked) }},
                     else_branch = e () => (float z) {{ z = Unsqueeze(zeros, zero) }}>
    go = Constant<value = bool {{1}}>()
    total = Loop(count, go, zero_sum) <body = b (int64 i, bool c, float acc) => (bool c2, float acc2) {{
        idx = Gather<axis=0>(picked, i)
        box = Gather<axis=0>(pooled, idx)
        v = ReduceSum<keepdims=0>(box)
        acc2 = Add(acc, v)
        c2 = Identity(c)
    }}>
    zero_sum = Constant<value_float=0.0>()
}}'''
    proto = onnx.parser.parse_model(text)
    # Loop reads zero_sum, produced after it in the text: put the Constant first, as exporters do
    nodes = list(proto.graph.node)
    nodes.insert(0, nodes.pop())
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    for output in proto.graph.output:
        output.type.tensor_type.ClearField("shape")
    return proto


@pytest.mark.parametrize("seed,min_score,count", [(0, 0.2, 3), (1, 0.2, 3), (2, 0.2, 3), (0, 0.99, 0)])
def test_detector_matches_onnxruntime(seed, min_score, count):
    """Three boxes kept (If's then branch, three Loop iterations), or none (else branch, no iteration)."""
    x = np.random.default_rng(seed).standard_normal((1, 3, 16, 16)).astype(np.float32)
    proto = detector(min_score)
    expected = run(proto, [x])
    total, selected, kept = onnxtorch.to_torch(proto)(torch.from_numpy(x))
    assert selected.dtype == torch.int64 and tuple(selected.shape) == (count, 3)
    assert relative_error(selected, expected["selected"]) == 0
    assert relative_error(kept, expected["kept"]) <= 1e-5
    assert relative_error(total, expected["total"]) <= 1e-5


def test_detector_gradient_reaches_the_input():
    module = onnxtorch.to_torch(detector())
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)).double()
    module = module.double()
    x.requires_grad_()
    total, selected, _ = module(x)
    assert selected.shape[0] > 0
    grad = torch.autograd.grad(total, x)[0]
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    direction = torch.randn_like(x)
    eps = 1e-4
    with torch.no_grad():
        plus = module(x + eps * direction)[0]
        minus = module(x - eps * direction)[0]
    numeric = float((plus - minus) / (2 * eps))
    assert abs(numeric - float((grad * direction).sum())) <= 1e-4 * max(1.0, abs(numeric))


def test_an_unsupported_op_inside_a_body_is_named_before_anything_runs():
    proto = onnx.parser.parse_model('''<ir_version: 8, opset_import: ["" : 17]>
g (float[2] x, bool c) => (float y) {
    y = If(c) <then_branch = t () => (float a) { a = Relu(x) },
               else_branch = e () => (float b) { b = Sigmoid(x) }>
}''')
    proto.graph.node[0].attribute[1].g.node[0].op_type = "NoSuchOp"
    with pytest.raises(onnxtorch.UnsupportedOp, match=r"NoSuchOp \(opset 17, node '#0 -> y/else_branch/#0 -> b'\)"):
        onnxtorch.to_torch(proto)
