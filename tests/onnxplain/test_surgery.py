"""Surgery: exposed tensors, head + tail == full model, crossing tensors, nothing mutated."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
import pytest

import helpers
import real_models
from onnxplain.errors import TensorNameError
from onnxplain.model import Model
from onnxplain.surgery import expose, randomise, split
from test_model import EXPORTS, SkipNet


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def rel_diff(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def compose(cut, feeds):
    """Run head then tail, passing `at` and every crossing tensor across."""
    head = session(cut.head)
    head_out = dict(zip([o.name for o in head.get_outputs()], head.run(None, feeds)))
    tail_feeds = {name: head_out.get(name, feeds.get(name)) for name in [cut.at, *cut.crossing]}
    return session(cut.tail).run(None, tail_feeds)


@pytest.mark.parametrize("kind", list(EXPORTS))
def test_split_inside_residual_block_equals_full_model(kind, tmp_path):
    path = helpers.export(SkipNet(), tmp_path / "skip.onnx", **EXPORTS[kind])
    model = Model.load(path)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    feeds = {model.inputs[0].name: x}
    full = session(model.proto).run(None, feeds)[0]
    relus = [t.name for t in model.layers if t.op_type == "Relu"]
    inner = relus[1]  # relu(a(x)): the skip from relus[0] crosses this cut
    before = model.proto.SerializeToString()
    for at in (relus[0], inner, relus[-1]):
        cut = split(model.proto, at)
        out = compose(cut, feeds)[0]
        assert rel_diff(out, full) <= 1e-5, (kind, at)
        if at == inner:
            assert cut.crossing, "the skip connection must cross the cut"
    assert model.proto.SerializeToString() == before  # nothing mutated


def test_exposed_values_equal_split_head_values(effnet):
    model = Model.load(effnet)
    layer = model.auto_layer()[0]
    x = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    exposed = session(expose(model.proto, [layer])).run([layer], {"input": x})[0]
    head = session(split(model.proto, layer).head).run([layer], {"input": x})[0]
    np.testing.assert_allclose(exposed, head, rtol=0, atol=1e-5 * np.abs(head).max())
    full = session(model.proto).run(None, {"input": x})[0]
    assert rel_diff(compose(split(model.proto, layer), {"input": x})[0], full) <= 1e-5


def test_split_paddle_constant_weights_model():
    model = Model.load(real_models.ppocr_cls(), probe_size=(48, 192))
    x = np.random.default_rng(2).uniform(-1, 1, size=(1, 3, 48, 192)).astype(np.float32)
    full = session(model.proto).run(None, {"x": x})[0]
    cut = split(model.proto, model.auto_layer()[0])
    assert rel_diff(compose(cut, {"x": x})[0], full) <= 1e-5


def test_expose_unknown_name_is_a_clear_error(effnet):
    model = Model.load(effnet)
    with pytest.raises(TensorNameError, match="no tensor named 'nope'"):
        expose(model.proto, ["nope"])
    with pytest.raises(TensorNameError, match="no tensor named 'nope'"):
        split(model.proto, "nope")


def test_randomise_changes_only_named_weights(tmp_path):
    model = Model.load(helpers.export(SkipNet(), tmp_path / "s.onnx"))
    name = next(iter(t.name for t in model.proto.graph.initializer))
    new = Model.load(randomise(model.proto, [name], seed=3))
    assert not np.allclose(new.weights[name], model.weights[name])
    others = [n for n in model.weights if n != name and n in new.weights]
    assert all(np.array_equal(new.weights[n], model.weights[n]) for n in others)
    with pytest.raises(TensorNameError):
        randomise(model.proto, ["missing"])


def _function_model(local: bool) -> onnx.ModelProto:
    """Conv -> Relu -> Double -> GAP -> Flatten -> Gemm, where Double is a model-local function (x + x) when
    `local`, else a plain Add; metadata and an extra opset import ride along."""
    rng = np.random.default_rng(5)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")
    fc = numpy_helper.from_array(rng.normal(size=(2, 4)).astype(np.float32), "fc")
    double = helper.make_node("Double", ["r"], ["d"], domain="local") if local else \
        helper.make_node("Add", ["r", "r"], ["d"])
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             double, helper.make_node("GlobalAveragePool", ["d"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "fn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], [w, b, fc])
    opsets = [helper.make_opsetid("", 17)]
    functions = []
    if local:
        opsets.append(helper.make_opsetid("local", 1))
        functions.append(helper.make_function("local", "Double", ["X"], ["Y"], [helper.make_node("Add", ["X", "X"], ["Y"])],
                                              [helper.make_opsetid("", 17)]))
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=8)
    helper.set_model_props(model, {"kind": "test"})
    return model


def test_split_keeps_local_functions_opsets_and_metadata():
    """The tail of a model calling a model-local function runs in onnxruntime, and head + tail reproduce the
    full model (rel 1e-6); opset imports, functions and metadata_props survive in both halves and in expose."""
    proto = _function_model(local=True)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    full = session(proto).run(None, {"x": x})[0]
    cut = split(proto, "r")
    assert rel_diff(compose(cut, {"x": x})[0], full) <= 1e-6
    for half in (cut.head, cut.tail, expose(proto, ["d"])):
        assert [(o.domain, o.version) for o in half.opset_import] == [("", 17), ("local", 1)]
        assert [f.name for f in half.functions] == ["Double"]
        assert {p.key: p.value for p in half.metadata_props} == {"kind": "test"}
    exposed = session(expose(proto, ["d"])).run(["d"], {"x": x})[0]
    np.testing.assert_allclose(exposed, 2 * np.maximum(session(expose(proto, ["c"])).run(["c"], {"x": x})[0], 0),
                               rtol=1e-6)


@pytest.mark.parametrize("method", ["recipro-cam", "ablation-cam"])
def test_tail_methods_run_on_a_model_with_a_local_function(method):
    """Recipro-CAM and Ablation-CAM re-run the tail, which calls the local function: the maps equal those of
    the same model written without the function (rtol 1e-5)."""
    from onnxplain import Explainer
    images = [np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8) for i in range(2)]
    maps = []
    for local in (True, False):
        explainer = Explainer(_function_model(local), preprocess="raw01", device="cpu", quiet=True)
        maps.append([a.raw for a in explainer.explain(images, method=method, target=1, layer="r")])
    for with_fn, without in zip(*maps):
        assert np.abs(with_fn).max() > 0
        np.testing.assert_allclose(with_fn, without, rtol=1e-5, atol=1e-6 * np.abs(without).max())
