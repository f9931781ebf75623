"""The ONNX backend node suite (onnx 1.22.0 wheel data) through the converter, compared as onnx's runner does
(rtol 1e-3, atol 1e-7, exact shape and dtype): every case passes or is refused before it runs.

Also the fixes the suite found, one small graph each (tolerance 1e-6 unless a test says otherwise), and
PP-OCRv4 det parity on a text page (1e-4 of the output's maximum).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import onnxtorch
import real_models
from backend_suite import VISION_OPS, figures, load_cases, run_suite
from converter_oracle import relative_error, run


def parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


def test_every_backend_case_passes_or_is_refused_before_running():
    results = run_suite(load_cases(real_models.onnx_backend_wheel()))
    bad = [f"{r.case} [{r.op}] {r.outcome}: {r.detail[:160]}" for r in results if r.outcome in ("wrong", "crash")]
    assert not bad, "\n".join(bad)
    counts = figures(results)
    assert sum(counts["all"].values()) == 1765 and sum(counts["vision"].values()) == 936
    assert counts["vision"]["pass"] >= 699 and counts["all"]["pass"] >= 998
    followed = sorted(r.case for r in results if r.outcome == "onnxruntime")  # Resize align_corners with scales
    assert followed == ["test_resize_downsample_scales_cubic_align_corners",
                        "test_resize_downsample_scales_linear_align_corners"]
    refused = [r for r in results if r.outcome == "refused"]
    assert all(r.detail.startswith(("The converter does not support", "The converter cannot run",
                                    "The converter runs float32")) for r in refused)
    assert "LayerNormalization" in VISION_OPS


def test_top_k_ties_come_in_ascending_index_order():
    module = onnxtorch.to_torch(parse('''<ir_version: 8, opset_import: ["" : 11]>
        g (float[4] x, int64[1] k) => (float v, int64 i) { v, i = TopK(x, k) }'''))
    values, indices = module(torch.zeros(4), torch.tensor([3]))
    assert indices.tolist() == [0, 1, 2] and values.tolist() == [0, 0, 0]


def test_layer_normalization_gives_mean_and_inv_std_dev():
    module = onnxtorch.to_torch(parse('''<ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x, float[3] s) => (float y, float m, float d) { y, m, d = LayerNormalization<axis=1>(x, s) }'''))
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    y, mean, inv = module(x, torch.ones(3))
    assert mean.flatten().tolist() == [2.0, 2.0] and mean.shape == (2, 1)
    assert inv.flatten().tolist() == pytest.approx([1 / np.sqrt(2 / 3 + 1e-5), 1 / np.sqrt(8 + 1e-5)], rel=1e-6)
    assert torch.allclose(y, (x - mean) * inv, atol=1e-6)


def test_lp_normalization_of_a_zero_vector_is_zero():
    module = onnxtorch.to_torch(parse('''<ir_version: 8, opset_import: ["" : 13]>
        g (float[2,2] x) => (float y) { y = LpNormalization<axis=1, p=2>(x) }'''))
    y = module(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    assert y[0].tolist() == [0, 0] and y[1].tolist() == pytest.approx([0.6, 0.8], rel=1e-6)


def test_reduce_max_and_min_over_an_empty_axis_give_the_infinities():
    module = onnxtorch.to_torch(parse('''<ir_version: 8, opset_import: ["" : 18]>
        g (float[2,0,4] x, int64[1] a) => (float hi, float lo) { hi = ReduceMax(x, a)  lo = ReduceMin(x, a) }'''))
    hi, lo = module(torch.zeros(2, 0, 4), torch.tensor([1]))
    assert hi.shape == (2, 1, 4) and bool((hi == -np.inf).all()) and bool((lo == np.inf).all())


def test_cast_to_float8_saturates_and_without_saturation_overflows():
    text = '''<ir_version: 9, opset_import: ["" : 19]>
        g (float[4] x) => (float8e4m3fn y, float8e5m2 z) {{ y = Cast<to=17, saturate={s}>(x)  z = Cast<to=19, saturate={s}>(x) }}'''
    x = torch.tensor([1000.0, -1e6, np.inf, 0.40625])
    y, z = onnxtorch.to_torch(parse(text.format(s=1)))(x)
    assert y.dtype == torch.float8_e4m3fn and y.float().tolist() == [448, -448, 448, 0.40625]
    assert z.float().tolist() == [1024, -57344, 57344, 0.375]
    y, z = onnxtorch.to_torch(parse(text.format(s=0)))(x)
    assert np.isnan(y.float()[:3].numpy()).all() and z.float().tolist()[1:3] == [-np.inf, np.inf]


def test_dropout_in_training_mode_is_refused_before_running():
    text = '''<ir_version: 8, opset_import: ["" : 13]>
        g (float[3] x, bool t) => (float y) { r = Constant<value=float {0.5}>()  y = Dropout(x, r, t) }'''
    with pytest.raises(onnxtorch.UnsupportedModel, match="Dropout node .* takes training_mode at run time"):
        onnxtorch.to_torch(parse(text))
    assert "training_mode" in onnxtorch.problem(parse(text))


def test_wide_unsigned_and_sequence_inputs_are_refused_with_the_reason():
    with pytest.raises(onnxtorch.UnsupportedModel, match="input 'x' is uint32, for which torch has almost no kernels"):
        onnxtorch.to_torch(parse('''<ir_version: 8, opset_import: ["" : 14]>
            g (uint32[3] x, uint32[3] y) => (uint32 z) { z = Add(x, y) }'''))
    seq = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_sequence_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_sequence_value_info("y", onnx.TensorProto.FLOAT, None)]))
    assert onnxtorch.problem(seq) == ("The converter cannot run this model: input 'x' is a sequence, and the "
                                      "converter runs tensors only (and 1 more).")


def test_pow_with_an_unsigned_exponent_has_a_gradient():
    module = onnxtorch.to_torch(parse('''<ir_version: 8, opset_import: ["" : 15]>
        g (float[3] x, uint8[3] e) => (float y) { y = Pow(x, e) }'''))
    x = torch.tensor([2.0, 3.0, 0.5], requires_grad=True)
    module(x, torch.tensor([1, 2, 3], dtype=torch.uint8)).sum().backward()
    assert x.grad.tolist() == [1.0, 6.0, 0.75]


def test_check_and_problem_name_the_ops_inside_subgraphs():
    then_branch = onnx.helper.make_graph([onnx.helper.make_node("NonMaxSuppression", ["b", "s"], ["k"], name="nms")],
                                         "then", [], [onnx.helper.make_tensor_value_info("k", 7, None)])
    else_branch = onnx.helper.make_graph([onnx.helper.make_node("Unique", ["b"], ["k2"], name="uniq")],
                                         "else", [], [onnx.helper.make_tensor_value_info("k2", 7, None)])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("If", ["c"], ["k"], name="branch", then_branch=then_branch, else_branch=else_branch)],
        "g", [onnx.helper.make_tensor_value_info(n, t, None) for n, t in (("c", 9), ("b", 1), ("s", 1))],
        [onnx.helper.make_tensor_value_info("k", 7, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    missing = onnxtorch.check(model)
    assert ("NonMaxSuppression", 13, "branch/then_branch/nms") in missing
    assert ("Unique", 13, "branch/else_branch/uniq") in missing
    assert "NonMaxSuppression (opset 13, node 'branch/then_branch/nms')" in onnxtorch.problem(model)


def test_ppocr_det_matches_onnxruntime_on_a_text_page():
    """PP-OCRv4 det on skimage's page() (ImageNet normalisation): within 1e-4 of the output's maximum.
    On inputs where the map is all near 0 (a cat photo: max 1e-7) the two differ relatively: onnxruntime's
    Sigmoid is a rational approximation whose relative error grows past 1e-3 below x = -9 (checked here)."""
    from skimage import data, transform
    page = transform.resize(data.page(), (192, 384)).astype(np.float32)
    x = torch.from_numpy(((np.stack([page] * 3)[None] - 0.45) / 0.225).astype(np.float32))
    path = real_models.ppocr_det()
    with torch.no_grad():
        out = onnxtorch.to_torch(path)(x)
    expected = next(iter(run(path, [x]).values()))
    assert float(expected.max()) > 0.9 and relative_error(out, expected) <= 1e-4
    sigmoid = parse('''<ir_version: 8, opset_import: ["" : 13]> g (float[50] x) => (float y) { y = Sigmoid(x) }''')
    z = np.linspace(-12, -9, 50).astype(np.float32)
    exact = 1 / (1 + np.exp(-z.astype(np.float64)))
    ort_error = np.abs(next(iter(run(sigmoid, [z]).values())) - exact) / exact
    torch_error = np.abs(onnxtorch.to_torch(sigmoid)(torch.from_numpy(z)).numpy() - exact) / exact
    assert ort_error.max() > 1e-3 and torch_error.max() < 1e-6
