"""Row pruning of tails (onnxplain/rowprune.py): a head reading the class token row makes the last block compute
only that row except for K and V. Pruned tails equal unpruned ones on tiny ViTs exported three ways, the pass
refuses (graph unchanged) where rows mix (mean-pooled tokens, softmax or cumsum over tokens, CNN tails), and
Recipro-CAM / Ablation-CAM maps are the same with and without it."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest
import torch
from torch import nn

import onnxplain
from onnxplain import rowprune
from onnxplain.model import Model
from onnxplain.rowprune import probe, prune_rows
from onnxplain.surgery import split
import zoo
from zoo import zoo_exports  # noqa: F401  (the session fixture)

LAST_BLOCK_INPUT = "/blocks/blocks.0/Add_1_output_0"  # zoo ViT: two blocks, 16 patches + class token
TOKENS = 17
TOLERANCE = 1e-5  # of the output's largest magnitude: the pruned tail sums the same products in another order


def last_block_input(model: Model) -> str:
    """LAST_BLOCK_INPUT, or in a dynamo export (opaque names) the input of blocks.1's first LayerNorm."""
    if LAST_BLOCK_INPUT in model.tensors:
        return LAST_BLOCK_INPUT
    return next(n.input[0] for n in model.proto.graph.node if n.op_type == "LayerNormalization"
                and any(p.value.find("blocks.1.norm1") >= 0 for p in n.metadata_props))


def tail_of(path, layer: str | None = None):
    model = Model.load(path)
    layer = layer or last_block_input(model)
    cut = split(model.proto, layer)
    return model, cut, {n: model.tensors[n].shape for n in [cut.at, *cut.crossing]}


def run(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def feeds_of(shapes: dict, batch: int = 3) -> dict:
    rng = np.random.default_rng(1)
    return {n: rng.standard_normal((batch, *s[1:])).astype(np.float32) for n, s in shapes.items()}


def full_rows(proto: onnx.ModelProto, shapes: dict) -> int:
    """Node outputs holding every token as rows (axis -2 of a rank >= 3 tensor)."""
    dims = probe(proto, shapes).dims
    return sum(1 for d in dims.values() if d is not None and len(d) >= 3 and d[-2] == TOKENS)


@pytest.mark.parametrize("kind", zoo.KINDS)  # legacy13: LayerNorm and GELU decomposed (ReduceMean, Erf)
def test_pruned_tail_equals_tail_and_computes_fewer_rows(zoo_exports, kind):
    _, cut, shapes = tail_of(zoo_exports.path("vit", kind))
    pruned = prune_rows(cut.tail, shapes)
    assert pruned is not cut.tail
    feeds = feeds_of(shapes)
    expected, got = run(cut.tail, feeds), run(pruned, feeds)
    assert got.shape == expected.shape == (3, zoo.NUM_CLASSES)
    assert np.abs(got - expected).max() <= TOLERANCE * np.abs(expected).max()
    before, after = full_rows(cut.tail, shapes), full_rows(pruned, shapes)
    # still whole: the previous block's MLP and residual, LayerNorm1, qkv, K and V
    assert after <= before // 2, (before, after)
    if kind == "legacy13":
        assert any(n.op_type == "ReduceMean" and n.output[0].endswith("_rows") for n in pruned.graph.node)


class MeanPooled(nn.Module):
    """The zoo ViT with a head over the mean of every token: no row can be dropped."""

    def __init__(self):
        super().__init__()
        self.vit = zoo.build("vit")

    def forward(self, x):
        v = self.vit
        x = v.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([v.cls_token.expand(x.shape[0], -1, -1), x], 1) + v.pos_embed
        return v.head(v.norm(v.blocks(x)).mean(1))


def test_mean_pooled_head_leaves_the_tail_unchanged(tmp_path):
    path = zoo.export(MeanPooled().eval(), tmp_path / "pooled.onnx", "legacy17")
    _, cut, shapes = tail_of(path)
    assert prune_rows(cut.tail, shapes) is cut.tail


def test_efficientnet_lite0_tail_is_unchanged(effnet):
    _, cut, shapes = tail_of(effnet, "/_swish_1/Clip_output_0")
    assert prune_rows(cut.tail, shapes) is cut.tail


GRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 5, 4] x) => (float[N, 2, 3] y) {{
    w = Constant <value = float[4, 3] {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}> ()
    e = Exp (x)
    m = MatMul (e, w)
    {mixing}
    starts = Constant <value = int64[1] {{0}}> ()
    ends = Constant <value = int64[1] {{2}}> ()
    axes = Constant <value = int64[1] {{1}}> ()
    y = Slice (t, starts, ends, axes)
}}
"""


@pytest.mark.parametrize("mixing, pushed", [
    ("t = Softmax <axis = -1> (m)", {"Exp", "MatMul", "Softmax"}),  # over features: row-local
    ("t = Softmax <axis = 1> (m)", None),                          # over rows: refused, graph unchanged
    ("t = CumSum (m, axes)", None),                                # an op it does not know: refused
])
def test_slice_of_leading_rows_is_pushed_through_row_local_ops_only(mixing, pushed):
    proto = onnx.parser.parse_model(GRAPH.format(mixing=mixing))
    pruned = prune_rows(proto, {"x": ("N", 5, 4)})
    if pushed is None:
        assert pruned is proto
        return
    assert {n.op_type for n in pruned.graph.node if n.output[0].endswith("_rows")} == pushed
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(run(pruned, {"x": x}), run(proto, {"x": x}), rtol=1e-6)


@pytest.mark.parametrize("method", ["recipro-cam", "ablation-cam"])
def test_tail_methods_give_the_same_maps_with_and_without_pruning(zoo_exports, monkeypatch, method):
    path = zoo_exports.path("vit", "legacy17")
    image = (zoo.photo()[0].numpy().transpose(1, 2, 0))
    maps, sizes = {}, {}
    for enabled in (True, False):
        monkeypatch.setattr(rowprune, "ENABLED", enabled)
        ex = onnxplain.Explainer(path, preprocess=None, device="cpu", quiet=True)
        maps[enabled] = ex.explain([image], method, layer=LAST_BLOCK_INPUT, target="top3")
        sizes[enabled] = len(ex.tail(LAST_BLOCK_INPUT)[0].tail.graph.node)
    assert sizes[True] != sizes[False]
    for a, b in zip(maps[True], maps[False]):
        assert a.target == b.target
        scale = np.abs(b.raw).max()
        assert scale > 0 and np.abs(a.raw - b.raw).max() <= 1e-5 * scale


def test_static_batch_export_is_probed_at_batch_one(tmp_path):
    path = tmp_path / "static.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.build("vit"), (zoo.sample(1),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    _, cut, shapes = tail_of(path)
    assert shapes[cut.at] == (1, TOKENS, 32)
    pruned = prune_rows(cut.tail, shapes)
    assert pruned is not cut.tail
    feeds = feeds_of(shapes, batch=1)
    expected = run(cut.tail, feeds)
    assert np.abs(run(pruned, feeds) - expected).max() <= TOLERANCE * np.abs(expected).max()


@pytest.mark.parametrize("kind", zoo.KINDS)
def test_shapes_are_inferred_without_the_probe_and_prune_the_same(zoo_exports, kind, monkeypatch):
    """On the zoo ViT exported three ways, shape inference with the shape arithmetic folded knows every value
    the probe does (the same dims), so pruning never runs the probe and gives the graph the probe's shapes give."""
    from onnxplain import rowshapes
    _, cut, shapes = tail_of(zoo_exports.path("vit", kind))
    probed = {n: d for n, d in probe(cut.tail, shapes).dims.items() if d is not None}
    inferred = rowshapes.infer(cut.tail, shapes)
    assert inferred.dims == probed and inferred.floating == probe(cut.tail, shapes).floating
    monkeypatch.setattr(rowprune, "tail_shapes", probe)  # the shapes as before: the probe's alone
    expected = prune_rows(cut.tail, shapes)
    monkeypatch.undo()
    monkeypatch.setattr(rowshapes, "probe", lambda *a: pytest.fail("the probe ran"))
    assert prune_rows(cut.tail, shapes).SerializeToString() == expected.SerializeToString()


def test_probe_runs_only_when_a_value_the_pass_reads_stays_unknown(monkeypatch):
    """Inferred dims answer alone; the first value inference left unknown runs the fallback (the probe) once,
    whose dims fill in only what inference did not know."""
    from onnxplain import rowshapes
    calls = []
    known = rowshapes.Probed({"a": (("N", 1), 3)}, {"a"},
                             lambda: calls.append(1) or rowshapes.Probed({"a": (2,), "b": (4,)}, {"b"}))
    assert known.get("a") == (("N", 1), 3) and calls == []
    assert known.get("b") == (4,) and known.get("a") == (("N", 1), 3) and known.get("c") is None
    assert calls == [1] and known.floating == {"a", "b"}


SHAPE_BY_DIV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 6, 8] x) => (float[2, 6, 2, 4] y) {
    s = Shape (x)
    two = Constant <value_int = 2> ()
    c = Gather <axis = 0> (s, two)
    d = Div (c, two)
    zero = Constant <value_ints = [0]> ()
    du = Unsqueeze (d, zero)
    head = Constant <value_ints = [2, 6, 2]> ()
    target = Concat <axis = 0> (head, du)
    y = Reshape (x, target)
}
"""


def test_shape_arithmetic_with_div_is_folded_so_reshape_dims_are_known():
    """onnx's data propagation stops at Div (as in the legacy exporter's attention reshapes); folding the Shape,
    Gather, Div, Unsqueeze and Concat into constants lets inference give the Reshape's dims."""
    from onnxplain.rowshapes import _infer_folding
    from onnxplain.shapefold import fold_shapes
    proto = onnx.parser.parse_model(SHAPE_BY_DIV)
    proto.graph.output[0].type.tensor_type.ClearField("shape")
    plain = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    assert [d.dim_value for d in plain.graph.output[0].type.tensor_type.shape.dim] == [2, 6, 2, 0]
    folded = _infer_folding(plain)
    assert [d.dim_value for d in folded.graph.output[0].type.tensor_type.shape.dim] == [2, 6, 2, 4]
    assert [n.op_type for n in folded.graph.node] == ["Constant"] * 8 + ["Reshape"]
    target = next(n for n in folded.graph.node if n.output[0] == "target")
    assert onnx.numpy_helper.to_array(target.attribute[0].t).tolist() == [2, 6, 2, 4]
    assert not fold_shapes(folded)
