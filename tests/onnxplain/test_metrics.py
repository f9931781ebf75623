"""Audit metrics: known answers on tiny models.

Deletion/insertion: hand-computed AUCs on a model whose logit is the mean of its input (exact to 1e-6), and
on RegionNet a perfect map (1 in REGION) beats a random map. Pointing game: hits and misses by hand.
Spearman and SSIM match scipy and scikit-image (1e-9, 1e-6). Drift: a model against itself agrees fully
(exactly 1.0); a copy with one layer randomised agrees less. Sanity check: eigen-cam on the first layer passes
and a weight-independent edge detector fails.
"""
from __future__ import annotations

import json

import numpy as np
import onnx.parser
import onnx.version_converter
import pytest

import helpers
import onnxplain
from onnxplain import metrics
from onnxplain.errors import UserError
from onnxplain.methods import REGISTRY, list_methods, register
from onnxplain.methods.base import Method, RawMaps
from onnxplain.surgery import randomise, restrict_outputs

MEAN_NET = """
<ir_version: 8, opset_import: ["" : 17]>
mean_net (float[N, 3, 4, 4] input) => (float[N, 2] scores) {
    m = ReduceMean <axes = [1, 2, 3], keepdims = 1> (input)
    f = Flatten (m)
    n = Neg (f)
    scores = Concat <axis = 1> (f, n)
}
"""
# keep the slow defaults small; every other parameter keeps its default
LIGHT = {"rise": {"n": 200}, "smoothgrad": {"n": 6}, "smoothgrad-fd": {"n": 64}, "integrated-gradients": {"steps": 8},
         "smooth-grad-cam++": {"n": 4}}


@pytest.fixture(scope="module")
def region(region_model):
    return onnxplain.load(region_model, preprocess="raw01", quiet=True)


def first_relu(explainer) -> str:
    """The tensor after the first Conv's activation: a 32x32 layer that only conv1's weights shape."""
    conv = metrics.weight_layers(explainer.model)[0].name
    return explainer.model.consumers[conv][0].output[0]


# ---- deletion and insertion ----------------------------------------------------------------------
def test_auc_trapezoid_hand_computed():
    assert metrics.auc([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5, abs=1e-12)
    assert metrics.auc([0, 0.25, 1], [0, 1, 1]) == pytest.approx(0.125 + 0.75, abs=1e-12)
    assert metrics.auc([0, 1], [2, 2]) == pytest.approx(2.0, abs=1e-12)


def test_deletion_insertion_hand_computed_on_mean_model():
    """Logit 0 = mean of the input; 8 of 16 pixels are 1 and ranked first; 4 steps, zero baselines.

    Deletion: 0.5, 0.25, 0, 0, 0 -> AUC 0.125. Insertion: 0, 0.25, 0.5, 0.5, 0.5 -> AUC 0.375.
    """
    explainer = onnxplain.load(onnx.parser.parse_model(MEAN_NET), preprocess="raw01", quiet=True)
    x = np.zeros((3, 4, 4), np.float32)
    x[:, :2, :] = 1.0
    saliency = np.arange(16, 0, -1, dtype=np.float32).reshape(4, 4)  # raster order, top half first
    deletion, insertion = metrics.deletion_insertion(explainer, x, saliency, 0, steps=4, probability=False,
                                                     deletion_baseline="zero", insertion_baseline="zero")
    assert np.allclose(deletion.fractions, [0, 0.25, 0.5, 0.75, 1])
    assert np.allclose(deletion.scores, [0.5, 0.25, 0, 0, 0], atol=1e-6)
    assert np.allclose(insertion.scores, [0, 0.25, 0.5, 0.5, 0.5], atol=1e-6)
    assert deletion.auc == pytest.approx(0.125, abs=1e-6) and insertion.auc == pytest.approx(0.375, abs=1e-6)
    black, _ = metrics.deletion_insertion(explainer, x, saliency, 0, steps=4, probability=False,
                                          deletion_baseline="black", insertion_baseline="zero")
    assert black.auc == pytest.approx(0.125, abs=1e-6)  # raw01: a black image is zeros in model space


def test_perfect_map_beats_random_map_on_region_net(region):
    """REGION is 64 of 1024 pixels: a perfect map removes it in the first 2 of 32 steps, after which the score
    is the baseline's exactly (1e-5); a random map spreads it over the whole curve."""
    batch = region.prepare(helpers.random_images(3, seed=3))
    probs = _softmax(region.forward(batch)["scores"])
    zero = _softmax(region.run(np.zeros_like(batch.x[:1]))["scores"])[0]
    perfect = np.zeros((32, 32), np.float32)
    r0, r1, c0, c1 = helpers.REGION
    perfect[r0:r1, c0:c1] = 1
    noise = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    for i in range(len(batch)):
        target = int(np.argmax(probs[i] - zero))  # the class the region's evidence raises most
        kwargs = dict(steps=32, deletion_baseline="zero", insertion_baseline="zero")
        good_del, good_ins = metrics.deletion_insertion(region, batch.x[i], perfect, target, **kwargs)
        bad_del, bad_ins = metrics.deletion_insertion(region, batch.x[i], noise, target, **kwargs)
        assert good_del.auc < bad_del.auc and good_ins.auc > bad_ins.auc
        assert np.allclose(good_del.scores[2:], zero[target], atol=1e-5)
        assert np.allclose(good_ins.scores[2:], probs[i, target], atol=1e-5)


def test_all_steps_run_as_one_batch(region, monkeypatch):
    calls = []
    original = region.run
    monkeypatch.setattr(region, "run", lambda x, outputs=None, desc=None: calls.append(len(x)) or original(x, outputs))
    x = region.prepare(helpers.random_images(1))
    metrics.deletion_insertion(region, x.x[0], np.random.default_rng(1).random((8, 8)), 0, steps=16)
    assert calls == [2 * 17]


def test_nhwc_model_gives_the_same_curves(region, nhwc_model):
    """The NHWC twin of RegionNet: same AUCs for the same map (1e-5)."""
    nhwc = onnxplain.load(nhwc_model, preprocess="raw01", quiet=True)
    image = helpers.random_images(1, seed=4)
    saliency = np.random.default_rng(2).random((32, 32))
    a = metrics.deletion_insertion(region, region.prepare(image).x[0], saliency, 1, steps=8)
    b = metrics.deletion_insertion(nhwc, nhwc.prepare(image).x[0], saliency, 1, steps=8)
    for ca, cb in zip(a, b):
        assert ca.auc == pytest.approx(cb.auc, abs=1e-5)


def test_unknown_baseline_is_a_user_error(region):
    with pytest.raises(UserError, match="Unknown baseline"):
        metrics.deletion_insertion(region, np.zeros((3, 32, 32), np.float32), np.zeros((32, 32)), 0,
                                   deletion_baseline="grey")


# ---- pointing game -------------------------------------------------------------------------------
def test_pointing_game_hits_and_misses():
    heatmap = np.zeros((100, 100), np.float32)
    heatmap[50, 60] = 1.0  # maximum at x=60, y=50
    assert metrics.pointing_hit(heatmap, [[55, 45, 70, 55]])               # inside
    assert not metrics.pointing_hit(heatmap, [[80, 80, 90, 90]])           # 36 px away
    assert metrics.pointing_hit(heatmap, [[70, 40, 80, 60]])               # 10 px away, tolerance 15
    assert not metrics.pointing_hit(heatmap, [[70, 40, 80, 60]], tolerance=5)
    assert metrics.pointing_hit(heatmap, [[0, 0, 5, 5], [72, 59, 80, 70]])  # any box: hypot(12, 9) = 15
    assert not metrics.pointing_hit(np.ones((100, 100)), [[0, 0, 100, 100]])  # a flat map points nowhere


def test_load_boxes(tmp_path):
    good = tmp_path / "boxes.json"
    good.write_text(json.dumps({"a.jpg": [[1, 2, 3, 4]], "sub/b.png": [5, 6, 7, 8]}))
    boxes = metrics.load_boxes(good)
    assert boxes == {"a.jpg": [(1, 2, 3, 4)], "sub/b.png": [(5, 6, 7, 8)]}
    assert metrics.boxes_for(boxes, tmp_path / "x" / "a.jpg") == [(1, 2, 3, 4)]
    assert metrics.boxes_for(boxes, tmp_path / "sub" / "b.png", root=tmp_path) == [(5, 6, 7, 8)]
    assert metrics.boxes_for(boxes, tmp_path / "c.jpg") is None
    for text in ("[1, 2]", "{\"a.jpg\": [[3, 0, 1, 4]]}", "not json"):
        good.write_text(text)
        with pytest.raises(UserError):
            metrics.load_boxes(good)


# ---- similarity ----------------------------------------------------------------------------------
def test_spearman_and_ssim_match_scipy_and_skimage():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b = rng.random((32, 40)), rng.random((32, 40))
        b[:8] = a[:8]
        a[a > 0.7] = 0.7  # ties
        assert metrics.spearman(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel())[0], abs=1e-9)
        expected = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1.0)
        assert metrics.ssim(a, b) == pytest.approx(expected, abs=1e-6)
    assert metrics.spearman(np.ones(5), np.ones(5)) == 1.0 and metrics.spearman(np.ones(5), np.arange(5)) == 0.0
    assert metrics.similarity(a, a) == pytest.approx((1.0, 1.0))


# ---- drift ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", [m["name"] for m in list_methods() if m["engine"] == "ort"])
def test_drift_of_a_model_against_itself_is_zero(region, region_model, method):
    other = onnxplain.load(region_model, preprocess="raw01", quiet=True)
    params = dict(LIGHT.get(method, {}))
    if "seed" in next(m["params"] for m in list_methods() if m["name"] == method):
        params["seed"] = 1
    result = metrics.drift(region, other, helpers.random_images(2, seed=5), [method], params={method: params})
    assert result.top1_agreement == 1.0 and result.top5_overlap == 1.0
    assert result.spearman(method) == pytest.approx(1.0, abs=1e-9)


def test_drift_against_a_randomised_layer_is_lower(region):
    images = helpers.random_images(3, seed=6)
    layers = metrics.weight_layers(region.model)
    conv1 = region.twin(randomise(region.model.proto, layers[0].weights, seed=1))
    maps = metrics.drift(region, conv1, images, ["eigen-cam"], layer=first_relu(region))
    assert maps.spearman("eigen-cam") < 0.9
    # seed 0 redraws the classifier so that RegionNet's top-1 (class 2 for noise images) becomes class 0
    head = region.twin(randomise(region.model.proto, layers[-1].weights, seed=0))
    classes = metrics.drift(region, head, images, ["eigen-cam"], layer=first_relu(region))
    assert classes.top1_agreement == 0.0
    assert classes.spearman("eigen-cam") == pytest.approx(1.0, abs=1e-9)  # eigen-cam ignores the classifier
    assert maps.top1_agreement == 1.0  # conv1 alone leaves the bias-dominated prediction
    order = [d.drift_key() for d in maps.images]
    assert order == sorted(order)  # most drifting (lowest agreement, then lowest Spearman) first


def test_twin_keeps_engine_device_and_batch_size(region_model):
    """A twin for randomised weights runs where and how the original runs: engine torch stays torch, and
    its forward-only maps differ from the original's (the weights do)."""
    original = onnxplain.Explainer(region_model, preprocess="raw01", device="cpu", quiet=True, engine="torch",
                                   batch_size=7)
    layers = metrics.weight_layers(original.model)
    copy = original.twin(randomise(original.model.proto, layers[0].weights, seed=1))
    assert (copy.engine, copy.device, copy.runtime.batch_size) == ("torch", "cpu", 7)
    assert copy.model.tensors is original.model.tensors  # same graph: the index is reused, not recomputed
    other = original.twin(restrict_outputs(original.model.proto, [original.model.outputs[0].name]))  # same graph
    assert other.model.tensors is original.model.tensors
    other = original.twin(onnx.version_converter.convert_version(original.model.proto, 18))  # another graph
    assert other.model.tensors is not original.model.tensors and other.model.tensors == original.model.tensors
    images = helpers.random_images(1, seed=3)
    [a], [b] = (e.explain(images, method="eigen-cam", target=0) for e in (original, copy))
    assert not np.allclose(a.raw, b.raw)


# ---- randomisation sanity check ------------------------------------------------------------------
class Edges(Method):
    """Test-only: the input's gradient magnitude, which no weight can change."""
    name = "test-edges"
    engine = "ort"
    summary = "image gradient magnitude (test only)"

    def explain(self, explainer, batch, targets, layer=None) -> RawMaps:
        x = batch.x if batch.spec.layout == "NCHW" else batch.x.transpose(0, 3, 1, 2)
        gy, gx = np.gradient(x.mean(axis=1), axis=(1, 2))
        return RawMaps(np.hypot(gx, gy))


@pytest.fixture
def edges():
    register(Edges)
    yield Edges.name
    REGISTRY.pop(Edges.name, None)


def test_weight_layers_of_region_net(region):
    layers = metrics.weight_layers(region.model)
    assert [(l.op_type, l.weights) for l in layers] == [
        ("Conv", ("conv1.weight", "conv1.bias")), ("Conv", ("conv2.weight", "conv2.bias")),
        ("Gemm", ("fc.weight", "fc.bias"))]


def test_sanity_check_eigen_cam_passes_and_edges_fail(region, edges):
    images = helpers.random_images(2, seed=8)
    result = metrics.sanity_check(region, images, "eigen-cam", layer=first_relu(region))
    cascade = result.cascade
    assert [len(s.randomised) for s in cascade] == [1, 2, 3] and len(result.independent) == 3
    assert cascade[0].spearman == pytest.approx(1.0, abs=1e-9)  # the classifier alone: conv1's map unchanged
    assert result.passed and result.final_spearman <= metrics.SANITY_MAX_SPEARMAN
    assert "passes" in result.verdict()
    fake = metrics.sanity_check(region, images, edges, depths=1, independent=0)
    assert len(fake.steps) == 1 and not fake.passed
    assert fake.final_spearman == pytest.approx(1.0, abs=1e-9) and "FAILS" in fake.verdict()
    assert json.dumps(result.as_dict())  # JSON-ready


def test_randomised_copy_leaves_the_model_unchanged(region):
    before = region.model.proto.SerializeToString()
    metrics.sanity_check(region, helpers.random_images(1), "eigen-cam", depths=1, independent=1)
    assert region.model.proto.SerializeToString() == before


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
