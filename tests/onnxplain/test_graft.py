"""`onnxplain graft`: maps computed by ONNX nodes inside the model equal onnxplain's own (CAM, Recipro-CAM,
Eigen-CAM, activations), in plain onnxruntime, on tiny zoo models (batch of 2) and EfficientNet-Lite0.

Tolerance: 1e-4 of the map's largest magnitude (float32 nodes against onnxplain's float64 arithmetic).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import onnxplain
import zoo
from onnxplain.cli import main
from onnxplain.graft import GraftError, graft
from test_serve import CHELSEA
from zoo import zoo_exports  # noqa: F401  (the session fixture)

METHODS = ("cam", "recipro-cam", "eigen-cam")


def run(proto: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))


def assert_same_maps(explainer: onnxplain.Explainer, batch, method: str) -> dict:
    outputs = run(graft(explainer.model, method), batch.x)
    own = np.stack([a.raw for a in explainer.explain(batch, method=method)])
    got = outputs["xai_" + method.replace("-", "_")]
    assert got.shape == own.shape
    np.testing.assert_allclose(got, own, rtol=0, atol=1e-4 * max(np.abs(own).max(), 1e-12))
    return outputs


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v3", "densenet", "efficientnet"])
@pytest.mark.parametrize("method", METHODS)
def test_grafted_maps_equal_onnxplain_on_zoo_models(zoo_exports, name, method):
    explainer = onnxplain.load(zoo_exports.path(name, "legacy17"), quiet=True)
    if method == "cam" and name == "mobilenet_v3":  # a hidden layer between pooling and the logits
        with pytest.raises(GraftError, match="graft recipro-cam or eigen-cam instead"):
            graft(explainer.model, method)
        return
    batch = explainer.prepare([np.asarray(img) for img in _images()])
    outputs = assert_same_maps(explainer, batch, method)
    logits = explainer.forward(batch)[explainer.model.outputs[0].name]
    np.testing.assert_allclose(outputs[explainer.model.outputs[0].name], logits, atol=1e-5)  # originals intact


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (32, 32, 3), np.uint8) for _ in range(2)]


@pytest.fixture(scope="module")
def effnet_explainer(effnet):
    return onnxplain.load(effnet, quiet=True)


@pytest.mark.parametrize("method", METHODS)
def test_grafted_maps_equal_onnxplain_on_efficientnet(effnet_explainer, method):
    assert_same_maps(effnet_explainer, effnet_explainer.prepare(str(CHELSEA)), method)


def test_cam_every_class_and_activations(effnet_explainer):
    batch = effnet_explainer.prepare(str(CHELSEA))
    cam = run(graft(effnet_explainer.model, "cam"), batch.x)
    predicted = int(cam["xai_class"][0])
    assert predicted == effnet_explainer.predict(batch, top=1)[0].top[0][0]
    for index in (predicted, 3):
        own = effnet_explainer.explain(batch, method="cam", target=index, relu=False)[0].raw
        np.testing.assert_allclose(cam["xai_cam_all"][0, index], own, atol=1e-4 * np.abs(own).max())
    layer = effnet_explainer.model.auto_layer()[0]
    acts = run(graft(effnet_explainer.model, "activations"), batch.x)["xai_activations"]
    np.testing.assert_array_equal(acts, effnet_explainer.forward(batch, [layer])[layer])


def test_graft_command_writes_a_model_plain_onnxruntime_runs(effnet, effnet_explainer, tmp_path):
    out = tmp_path / "model.xai.onnx"
    result = CliRunner().invoke(main, ["graft", str(effnet), "--method", "recipro-cam", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "new: xai_recipro_cam" in result.output
    proto = onnx.load(str(out))
    assert {m.key: m.value for m in proto.metadata_props}["onnxplain.graft"].startswith("recipro-cam at ")
    batch = effnet_explainer.prepare(str(CHELSEA))
    maps = run(proto, batch.x)["xai_recipro_cam"]
    own = effnet_explainer.explain(batch, method="recipro-cam")[0].raw
    np.testing.assert_allclose(maps[0], own, atol=1e-4 * np.abs(own).max())


def test_refusals(effnet_explainer, zoo_exports):
    with pytest.raises(GraftError, match="Unknown graft method 'grad-cam'; use one of cam, recipro-cam"):
        graft(effnet_explainer.model, "grad-cam")
    vit = onnxplain.load(zoo_exports.path("vit", "legacy17"), quiet=True)
    with pytest.raises(onnxplain.errors.UserError, match="NCHW|layer"):
        graft(vit.model, "eigen-cam")
    result = CliRunner().invoke(main, ["graft", "nowhere.onnx", "--method", "cam", "--out", "x.onnx"])
    assert result.exit_code == 2
