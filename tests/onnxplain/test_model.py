"""The model layer: loading, validation, weights, tensor index, layers and the auto layer."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import helpers
import real_models
from zoo import MODELS, zoo_exports  # noqa: F401  (the session fixture)
from onnxplain.errors import ModelError, TensorNameError
from onnxplain.model import Model


class SkipNet(nn.Module):
    """conv -> relu -> [conv -> relu -> conv] + skip -> relu -> GAP -> linear; shares one weight twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x)))
        y = torch.relu(self.bn(y) + x)
        return self.fc(y.mean(dim=(2, 3)))


EXPORTS = {"legacy13": dict(opset=13), "legacy17": dict(opset=17), "dynamo": dict(dynamo=True)}


@pytest.fixture(scope="module", params=list(EXPORTS))
def skipnet(request, tmp_path_factory):
    """SkipNet exported three ways (legacy opset 13 and 17, dynamo)."""
    path = tmp_path_factory.mktemp(request.param) / "skip.onnx"
    return request.param, helpers.export(SkipNet(), path, **EXPORTS[request.param])


def test_index_and_auto_layer_for_each_export(skipnet):
    kind, path = skipnet
    model = Model.load(path)
    assert model.inputs[0].shape[1:] == (3, 32, 32)
    auto, why = model.auto_layer()
    info = model.tensors[auto]
    # the last spatial tensor before the classifier: the block's final Relu, [batch, 8, 32, 32]
    assert info.op_type == "Relu" and info.shape[1:] == (8, 32, 32), (kind, auto, info)
    assert "Relu" in why
    # BatchNorm is folded into the conv by both exporters: no BatchNormalization layer survives
    assert all(t.op_type != "BatchNormalization" for t in model.layers)
    assert all(isinstance(d, int) for t in model.spatial_layers for d in t.shape[1:])
    weight_count = sum(a.size for a in {id(a): a for a in model.weights.values()}.values())
    expected = sum(p.numel() for p in SkipNet().parameters())
    assert weight_count >= expected - 2 * 8  # BN folded into b: its 16 affine values vanish


def test_dynamo_export_keeps_external_data_and_scopes(tmp_path):
    path = helpers.export(SkipNet(), tmp_path / "skip.onnx", dynamo=True)
    model = Model.load(path)
    assert any(t.scope for t in model.layers), "dynamo exports carry torch module paths in node metadata"
    assert model.weight_bytes > 0


def test_real_models_auto_layers(effnet):
    cases = [
        (effnet, None, "/_swish_1/Clip_output_0", (1280, 7, 7)),
        (real_models.ppocr_cls(), (48, 192), "hardswish_17.tmp_0", (200, 2, 96)),
        (real_models.mtcnn_onnx("onet"), None, "/prelu4/PRelu_output_0", (128, 3, 3)),
    ]
    for path, size, expected, shape in cases:
        model = Model.load(path, probe_size=size)
        assert model.auto_layer()[0] == expected
        assert model.tensors[expected].shape[1:] == shape


@pytest.mark.parametrize("name", [*MODELS, "efficientnet-lite0"])
def test_model_auto_layer_is_what_explain_picks(name, zoo_exports, effnet):
    """Model.auto_layer (check_cost, the server's /model) and explain's probed choice agree; on the ViT both
    skip the final LayerNorm, read only at its class token."""
    import onnxplain
    path = effnet if name == "efficientnet-lite0" else zoo_exports.path(name, "legacy17")
    explainer = onnxplain.load(path, preprocess=None if name == "efficientnet-lite0" else "raw01", quiet=True)
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    output = explainer.model.outputs[0].name
    [attribution] = explainer.explain([image], method="eigen-cam", output=output)
    assert explainer.model.auto_layer(output)[0] == attribution.layer, name
    if name == "vit":
        assert "read only at the class token" in explainer.model.auto_layer(output)[1]


def test_constant_node_weights_are_weights_not_layers():
    model = Model.load(real_models.ppocr_cls(), probe_size=(48, 192))
    assert not model.proto.graph.initializer  # Paddle keeps every weight in Constant nodes
    assert len(model.weights) > 100
    assert not set(model.weights) & {t.name for t in model.layers}
    assert model.producer.startswith("PaddlePaddle") and model.opset == 11


def test_identity_forwarded_weight_is_found():
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 2] x) => (float[1, 2] y) <float[2, 2] w = {1.0, 2.0, 3.0, 4.0}> {
        w2 = Identity(w)
        y = MatMul(x, w2)
    }
    """
    model = Model.load(onnx.parser.parse_model(text))
    assert np.array_equal(model.weights["w2"], model.weights["w"])


def test_missing_file_not_onnx_and_truncated(tmp_path, effnet):
    with pytest.raises(ModelError, match="does not exist"):
        Model.load(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a model at all \x00\x01")
    with pytest.raises(ModelError, match="not a valid ONNX model|holds no ONNX graph"):
        Model.load(junk)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(effnet.read_bytes()[:100_000])
    with pytest.raises(ModelError, match="not a valid ONNX model|holds no ONNX graph|checker"):
        Model.load(truncated)


def test_external_data_outside_model_folder_is_refused(tmp_path):
    path = helpers.export(SkipNet(), tmp_path / "a" / "skip.onnx" if (tmp_path / "a").mkdir() is None else None)
    proto = onnx.load(str(path))
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
              size_threshold=0)
    assert Model.load(path).weight_bytes > 0  # the good case loads
    bad = onnx.load(str(path), load_external_data=False)
    for tensor in bad.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../../etc/passwd"
    evil = tmp_path / "a" / "evil.onnx"
    evil.write_bytes(bad.SerializeToString())
    with pytest.raises(ModelError, match="outside the model's folder"):
        Model.load(evil)


def test_unknown_tensor_name_suggests_nearest(effnet):
    model = Model.load(effnet)
    with pytest.raises(TensorNameError, match=r"no tensor named '/_swish_1/Clip_output_9'.*nearest: '/_swish_1/Clip_output_0'"):
        model.resolve_layer("/_swish_1/Clip_output_9")
