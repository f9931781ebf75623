"""The OnnxModule contract: build-time errors, names, weights as parameters, taps, replace, devices.

Tolerances are stated per test; "exact" means equal up to float32 rounding of the
same ops (1e-6 relative).
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import onnxtorch
import zoo
from converter_oracle import cosine, relative_error, run


def parse(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(text)


TWO_UNKNOWN = """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
g (float[2, 2] x) => (float y) {
    a = Relu(x)
    b = com.example.Frobnicate(a)
    c = Det(b)
    y = Abs(c)
}"""


def test_unsupported_ops_are_all_listed_at_build_time():
    model = parse(TWO_UNKNOWN)
    model.graph.node[1].name = "n1"
    model.graph.node[2].name = "n2"
    with pytest.raises(onnxtorch.UnsupportedOp) as caught:
        onnxtorch.to_torch(model)
    assert caught.value.missing == [("com.example.Frobnicate", 1, "n1"), ("Det", 17, "n2")]
    assert str(caught.value) == (
        "The converter does not support 2 ops in this model: com.example.Frobnicate (opset 1, node 'n1'), "
        "Det (opset 17, node 'n2'); forward-only methods that run on onnxruntime still work.")
    assert onnxtorch.check(model) == caught.value.missing


def test_check_is_empty_for_convertible_models(zoo_exports):
    assert onnxtorch.check(zoo_exports.path("vit", "dynamo")) == []
    assert onnxtorch.check(zoo_exports.path("mobilenet_v3", "legacy13").read_bytes()) == []


def test_unknown_tap_names_the_nearest_tensors(zoo_exports):
    module = onnxtorch.to_torch(zoo_exports.path("resnet", "legacy17"))
    with pytest.raises(onnxtorch.UnknownTensor) as caught:
        module(zoo.sample(1), taps=["/layer2/relu/Relu_output"])
    assert isinstance(caught.value, KeyError)
    assert "'/layer2/relu/Relu_output'" in str(caught.value)
    assert "/layer2/relu/Relu_output_0" in str(caught.value)
    with pytest.raises(onnxtorch.UnknownTensor):
        module(zoo.sample(1), replace={"nope": torch.zeros(1)})


def test_names_and_producers(zoo_exports):
    module = onnxtorch.to_torch(zoo_exports.path("resnet", "legacy17"))
    assert module.input_names == ["input"] and module.output_names == ["logits"]
    assert module.tensor_names[0] == "/stem/stem.0/Conv_output_0" and module.tensor_names[-1] == "logits"
    info = module.producer("/layer2/relu/Relu_output_0")
    assert (info.op_type, info.name) == ("Relu", "/layer2/relu/Relu")
    assert module.producer("input") is None
    with pytest.raises(onnxtorch.UnknownTensor):
        module.producer("missing")


def test_weights_are_frozen_parameters_keyed_by_onnx_name(zoo_exports):
    module = onnxtorch.to_torch(zoo_exports.path("resnet", "dynamo"))
    bias = module.param("fc.bias")
    assert isinstance(bias, torch.nn.Parameter) and not bias.requires_grad
    assert dict(module.named_parameters())["fc_bias"] is bias and module.onnx_name_of["fc_bias"] == "fc.bias"
    assert torch.equal(bias, zoo_exports.model("resnet").fc.bias)
    assert all(not p.requires_grad for p in module.parameters())
    trainable = onnxtorch.to_torch(zoo_exports.path("densenet", "legacy13"), requires_grad=True)
    trainable(zoo.sample(2)).sum().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_conv_biases_stay_parameters_after_folding():
    """EfficientNet-Lite0's padding subgraphs fold away; its Conv weights and biases stay parameters."""
    from real_models import EFFICIENTNET_LITE0
    module = onnxtorch.to_torch(EFFICIENTNET_LITE0)
    proto = onnx.load(str(EFFICIENTNET_LITE0), load_external_data=False)
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert all(isinstance(module.param(n.input[2]), torch.nn.Parameter) for n in convs)
    assert len(module._steps) < len(proto.graph.node) // 2  # the pads subgraphs were computed once


def test_weights_shared_through_identity_and_constants_become_parameters():
    model = parse("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 2] x) => (float y) <float[2, 2] w = {1, 2, 3, 4}> {
        w2 = Identity(w)
        b = Constant<value = float[2] {0.5, -0.5}>()
        s = Constant<value = int64[2] {2, 1}>()
        h = MatMul(x, w)
        k = MatMul(h, w2)
        a = Add(k, b)
        y = Reshape(a, s)
    }""")
    module = onnxtorch.to_torch(model)
    assert module.param("w2") is module.param("w")
    assert isinstance(module.param("b"), torch.nn.Parameter)
    assert module.param("s").dtype == torch.int64 and "s" in dict(module.named_buffers())
    assert len(list(module.parameters())) == 2
    x = torch.tensor([[1.0, 1.0]])
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.allclose(module(x), (x @ w @ w + torch.tensor([0.5, -0.5])).reshape(2, 1))


def test_accepts_path_bytes_and_model_proto(zoo_exports):
    path = zoo_exports.path("vgg", "dynamo")  # weights in vgg_dynamo.onnx.data beside it
    assert path.with_name(path.name + ".data").exists()
    x = zoo.sample(2)
    expected = onnxtorch.to_torch(path)(x)
    assert torch.equal(onnxtorch.to_torch(onnx.load(str(path)))(x), expected)
    legacy = zoo_exports.path("vgg", "legacy17")
    assert torch.equal(onnxtorch.to_torch(legacy.read_bytes())(x), onnxtorch.to_torch(str(legacy))(x))
    with pytest.raises(onnxtorch.UnsupportedModel, match="external data"):
        onnxtorch.to_torch(onnx.load(str(path), load_external_data=False))


def test_float16_models_are_refused_at_build_time():
    model = parse("""<ir_version: 8, opset_import: ["" : 13]>
    g (float16[2] x) => (float16 y) <float16[2] w = {1, 2}> { y = Mul(x, w) }""")
    with pytest.raises(onnxtorch.UnsupportedModel, match="float16 tensor 'x'.*float32") as caught:
        onnxtorch.to_torch(model)
    assert onnxtorch.check(model) == []  # every op is known: only the precision is refused
    assert onnxtorch.problem(model) == str(caught.value)


def test_upcast_half_gives_a_float32_model_that_matches_onnxruntime():
    """Weights, Constant tensors, casts and declared types of a float16 graph become float32: the module runs
    it in float32 and matches onnxruntime's float16 run to float16 precision (2e-3 relative); the original
    is left untouched."""
    h = onnx.helper
    half = onnx.TensorProto.FLOAT16
    nodes = [h.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.array([3.0], np.float16))),
             h.make_node("Mul", ["x", "w"], ["a"]), h.make_node("Cast", ["a"], ["b"], to=onnx.TensorProto.FLOAT),
             h.make_node("Relu", ["b"], ["d"]), h.make_node("Cast", ["d"], ["e"], to=half),
             h.make_node("Add", ["e", "c"], ["y"])]
    weight = onnx.numpy_helper.from_array(np.array([0.5, -1.25, 2.0], np.float16), "w")
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", half, [2, 3])],
                         [h.make_tensor_value_info("y", half, [2, 3])], [weight])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=8)
    assert onnxtorch.has_half(model)
    upcast = onnxtorch.upcast_half(model)
    assert not onnxtorch.has_half(upcast) and onnxtorch.has_half(model) and onnxtorch.problem(upcast) is None
    assert onnxtorch.upcast_half(upcast) is upcast  # nothing half: the model itself, no copy
    x = np.array([[1.0, 2.0, -3.0], [0.25, -0.5, 4.0]], np.float16)
    expected = onnxruntime.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = onnxtorch.to_torch(upcast)(torch.from_numpy(x.astype(np.float32)))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.astype(np.float32), rtol=2e-3)


def test_problem_names_missing_ops_first_and_is_none_when_convertible(zoo_exports):
    model = parse(TWO_UNKNOWN)
    assert onnxtorch.problem(model) == str(onnxtorch.UnsupportedOp(onnxtorch.check(model)))
    assert onnxtorch.problem(zoo_exports.path("mobilenet_v3", "legacy13")) is None


@pytest.mark.parametrize("batch", [1, 5])
def test_shape_subgraphs_follow_the_batch(zoo_exports, batch):
    """ViT's legacy export computes reshapes from Shape -> Gather -> Concat; any batch works (1e-4)."""
    path = zoo_exports.path("vit", "legacy13")
    x = zoo.sample(batch, seed=3)
    with torch.no_grad():
        assert relative_error(onnxtorch.to_torch(path)(x), run(path, [x])["logits"]) <= 1e-4


def test_tap_gradient_equals_the_original_model(zoo_exports):
    """Grad-CAM's need: d score / d activation through a tap, inputs not requiring grad (cosine >= 0.9999)."""
    module = onnxtorch.to_torch(zoo_exports.path("resnet", "legacy17"))
    original = zoo_exports.model("resnet")
    layer = "/layer2/relu/Relu_output_0"
    x = zoo.sample(2, seed=4)
    (logits,), taps = module(x, taps=[layer])
    grad = torch.autograd.grad(logits[:, 3].sum(), taps[layer])[0]

    kept = {}
    handle = original.layer2.relu.register_forward_hook(lambda m, i, out: kept.update(act=out))
    try:
        out = original(x.clone().requires_grad_())
        expected = torch.autograd.grad(out[:, 3].sum(), kept["act"])[0]
    finally:
        handle.remove()
    assert relative_error(taps[layer], kept["act"]) <= 1e-5
    assert cosine(grad, expected) >= 0.9999


def test_tap_gradient_equals_finite_differences():
    """y = sum(tanh(a)^2) with a = W x tapped: autograd at the tap vs central differences (1e-3, float64)."""
    model = parse("""<ir_version: 8, opset_import: ["" : 13]>
    g (double[1, 3] x) => (double y) <double[3, 3] w = {1, -2, 0.5, 0.3, 1, -1, 2, 0.1, -0.4}> {
        a = MatMul(x, w)
        t = Tanh(a)
        s = Mul(t, t)
        y = ReduceSum<keepdims=0>(s)
    }""")
    module = onnxtorch.to_torch(model)
    x = torch.tensor([[0.2, -0.4, 0.7]], dtype=torch.float64)
    (y,), taps = module(x, taps=["a"])
    grad = torch.autograd.grad(y, taps["a"])[0]
    a = taps["a"].detach()
    eps = 1e-6
    for i in range(3):
        step = torch.zeros_like(a)
        step[0, i] = eps
        up = module(None, replace={"a": a + step})
        down = module(None, replace={"a": a - step})
        assert float(grad[0, i]) == pytest.approx(float(up - down) / (2 * eps), rel=1e-3)


def test_replace_runs_only_the_tail(zoo_exports):
    module = onnxtorch.to_torch(zoo_exports.path("mobilenet_v2", "legacy17"))
    x = zoo.sample(2)
    layer = next(n for n in module.tensor_names if module.producer(n).op_type == "GlobalAveragePool")
    with torch.no_grad():
        (full,), taps = module(x, taps=[layer])
        tail = module(replace={layer: taps[layer]})
    assert torch.equal(tail, full)
    plan = module._plan((), frozenset([layer]))
    assert len(plan.steps) < len(module._steps) and not plan.needed_inputs


def test_intermediates_are_freed_after_their_last_use(zoo_exports):
    """Every computed tensor except the outputs (and taps) is dropped by the step that last reads it."""
    module = onnxtorch.to_torch(zoo_exports.path("densenet", "legacy17"))
    for taps in ((), (module.tensor_names[3],)):
        plan = module._plan(taps, frozenset())
        freed = [s for step in plan.steps for s in step[4]]
        produced = {s for step in plan.steps for s in step[2]}
        kept = {module._slot_of[n] for n in module.output_names + list(taps)}
        assert len(freed) == len(set(freed)) and set(freed) >= produced - kept and not set(freed) & kept


def test_module_moves_with_to(zoo_exports):
    """All weights are registered: on 'meta' the forward runs with no CPU weight left behind; integer
    buffers (shape values) stay on the CPU; .double() converts every float weight."""
    module = onnxtorch.to_torch(zoo_exports.path("vit", "legacy17"))
    assert any(b.dtype == torch.int64 for b in module.buffers())
    meta = module.to("meta")
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert all(b.device.type == "cpu" for b in meta.buffers() if not b.is_floating_point())
    assert meta(torch.empty(3, 3, 32, 32, device="meta")).shape == (3, zoo.NUM_CLASSES)
    double = onnxtorch.to_torch(zoo_exports.path("resnet", "legacy17")).double()
    x = zoo.sample(2).double()
    with torch.no_grad():
        assert double(x).dtype == torch.float64
        assert relative_error(double(x), copy.deepcopy(zoo_exports.model("resnet")).double()(x)) <= 1e-6  # weights were folded in float32


def test_values_computed_from_shapes_follow_the_data_device():
    """Range/ConstantOfShape results live on the CPU; meeting data on another device they move there."""
    model = parse("""<ir_version: 8, opset_import: ["" : 13]>
    g (float[N, 4] x) => (float y) <int64 zero = {0}, int64 one = {1}> {
        s = Shape(x)
        n = Gather<axis=0>(s, one)
        r = Range(zero, n, one)
        f = Cast<to=1>(r)
        a = Add(x, f)
        z = ConstantOfShape<value=float[1] {0}>(s)
        y = Concat<axis=0>(a, z)
    }""")
    module = onnxtorch.to_torch(model)
    x = torch.randn(3, 4)
    assert relative_error(module(x), run(model, [x])["y"]) <= 1e-6
    out = module.to("meta")(torch.empty(2, 4, device="meta"))
    assert out.device.type == "meta" and out.shape == (4, 4)


def test_multiple_outputs_and_taps_shape(zoo_exports):
    from real_models import mtcnn_onnx
    module = onnxtorch.to_torch(mtcnn_onnx("onet"))
    out = module(torch.randn(2, 3, 48, 48))
    assert isinstance(out, tuple) and len(out) == 3
    outs, taps = module(torch.randn(2, 3, 48, 48), taps=[module.tensor_names[5]])
    assert len(outs) == 3 and list(taps) == [module.tensor_names[5]]
