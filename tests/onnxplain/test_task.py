"""The model as it is deployed: metadata read, output kinds, the explained output, refusals, sequences,
the auto layer on token models, static-batch exports and unreadable maps (issue 17)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnxplain import Explainer
from onnxplain.errors import TargetError, UserError
from onnxplain.images import Preprocess, _geometry
from onnxplain.mapcheck import map_warnings
from onnxplain.taskreport import inspect_task
from onnxplain.task import paddle_dictionary, size_of, ultralytics_names


def _export(model, path, shape, names=("images",), outputs=None, axes=None, meta=None):
    torch.onnx.export(model.eval(), torch.zeros(shape), str(path), dynamo=False, opset_version=17,
                      input_names=list(names), output_names=outputs, dynamic_axes=axes)
    proto = onnx.load(str(path))
    for key, value in (meta or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


class YoloHead(nn.Module):
    """Conv features -> (N, 4 + C, A) rows, as ultralytics' YOLOv8 Detect head writes them (C = 3)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.head = nn.Conv2d(8, 7, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x))).flatten(2)


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    return _export(YoloHead(), path, (1, 3, 64, 64), axes={"images": {0: "batch", 2: "height", 3: "width"}},
                   meta={"names": "{0: 'person', 1: 'bicycle', 2: 'car'}", "imgsz": "[64, 64]", "stride": "4",
                         "task": "detect", "batch": "1", "author": "Ultralytics"})


def test_ultralytics_metadata_is_read(yolo):
    e = Explainer(yolo, quiet=True)
    task = e.task
    assert task.input_size.value == (64, 64) and task.input_size.source == "metadata 'imgsz'"
    assert e.labels == ["person", "bicycle", "car"] and task.labels.source == "metadata 'names'"
    assert e.preprocess.resize == "letterbox" and e.preprocess.scale == pytest.approx(1 / 255)
    [out] = task.outputs
    assert out.kind == "detection rows" and out.shape[1:] == (7, 256) and out.box_layout.axis == "columns"
    x = e.prepare(np.zeros((64, 64, 3), np.uint8)).x
    assert x.shape == (1, 3, 64, 64)  # the metadata's size, not the 224 probe


def test_class_target_on_detection_rows_is_refused_and_predicted_is_a_box(yolo):
    e = Explainer(yolo, quiet=True)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(TargetError, match=r"^Output '.+' holds detection rows, not class scores, so target '5' "
                                          r"does not fit; use box:x1,y1,x2,y2\[:class\] \(or box:#K"):
        e.explain(image, method="occlusion", target="5")
    [a] = e.explain(image, method="occlusion", target="predicted", window=16, stride=16)
    rows = ort.InferenceSession(str(yolo)).run(None, {"images": e.prepare(image).x})[0][0]
    best = rows[4:].max(axis=0).argmax()
    assert a.target["kind"] == "BoxTarget" and a.target["row"] == best  # the most confident row
    report = inspect_task(e.model)
    assert report["outputs"][0]["kind"] == "detection rows" and "cam" not in report["outputs"][0]["methods"]
    assert "input_size" in report["read"] and report["problems"] == []


class Recogniser(nn.Module):
    """Conv over a 48x320 text line -> (N, 80, 5) softmax: CTC over 'blank, a, b, c, space'."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, (48, 4), stride=(48, 4))

    def forward(self, x):
        return self.conv(x).squeeze(2).transpose(1, 2).softmax(-1)


@pytest.fixture(scope="module")
def recogniser(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec.onnx"
    return _export(Recogniser(), path, (1, 3, 48, 320), names=("x",), axes={"x": {0: "batch"}},
                   meta={"character": "a\nb\nc"})


def test_ctc_text_and_char_target(recogniser):
    e = Explainer(recogniser, quiet=True)
    assert e.task.dictionary.value == ["blank", "a", "b", "c", " "] and e.task.outputs[0].kind == "sequence"
    image = np.random.default_rng(1).integers(0, 255, (48, 320, 3), dtype=np.uint8)
    probs = ort.InferenceSession(str(recogniser)).run(None, {"x": e.prepare(image).x})[0][0]
    best = probs.argmax(1)
    keep = [t for t in range(len(best)) if best[t] != 0 and (t == 0 or best[t] != best[t - 1])]
    expected = "".join(" abc "[best[t]] if best[t] < 4 else " " for t in keep)
    [p] = e.predict(image)
    assert p.text == expected and len(expected) > 2
    [a] = e.explain(image, method="occlusion", target="char:1", window=8, stride=8)
    assert a.target["step"] == keep[1] and a.target["char"] == expected[1]
    k = len(keep)
    with pytest.raises(TargetError, match=rf"^Target char:{k} is out of range: image 0 decodes to '.*' \({k} "
                                          rf"characters\), so K is 0\.\.{k - 1}\.$"):
        e.explain(image, method="occlusion", target=f"char:{k}")


def test_crop_covers_a_wide_input():
    """crop for 48x320 scales so the crop covers both sides: a 100x400 line keeps its full width in view."""
    m = _geometry((100, 400), (48, 320), Preprocess(resize="crop", resize_shorter=1.0))
    assert m[0, 0] == pytest.approx(0.8) and m[0, 2] == pytest.approx(0.0)  # 400 px wide -> 320, no cut
    assert _geometry((224, 224), (224, 224), Preprocess(resize="crop"))[0, 0] == pytest.approx(256 / 224)


class SoftmaxNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3))).softmax(1)


def test_probabilities_are_shown_as_the_model_gives_them(tmp_path):
    path = _export(SoftmaxNet(), tmp_path / "sm.onnx", (1, 3, 32, 32), axes={"images": {0: "batch"}})
    e = Explainer(path, quiet=True, input_size=(32, 32))
    assert e.task.outputs[0].kind == "probabilities" and e.task.outputs[0].normalised
    image = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    probs = ort.InferenceSession(str(path)).run(None, {"images": e.prepare(image).x})[0][0]
    [p] = e.predict(image, top=1)
    assert p.top[0][3] == pytest.approx(float(probs.max()), abs=1e-7)  # no second softmax
    from onnxplain.targets import ClassTarget
    t = ClassTarget("out", index=1, probability=True, normalised=True)
    assert t.score({"out": probs[None]})[0] == pytest.approx(probs[1])


class RegProb(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.reg, self.cls = nn.Linear(6, 4), nn.Linear(6, 2)

    def forward(self, x):
        f = torch.relu(self.conv(x)).mean((2, 3))
        return self.reg(f), self.cls(f).softmax(1)


def test_probability_output_is_explained_before_regression(tmp_path):
    path = _export(RegProb(), tmp_path / "rp.onnx", (1, 3, 24, 24), outputs=["reg", "prob"])
    e = Explainer(path, quiet=True)
    assert [(o.name, o.kind) for o in e.task.outputs] == [("reg", "regression"), ("prob", "probabilities")]
    assert e.output_name(None) == "prob"


class TinyViT(nn.Module):
    """Patch embedding + class token, two encoder blocks, a final LayerNorm read only at token 0."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.blocks = nn.Sequential(*[nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
                                      for _ in range(2)])
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.head(self.norm(self.blocks(t))[:, 0])


def test_auto_layer_skips_a_final_layernorm_read_only_at_the_class_token(tmp_path):
    path = _export(TinyViT(), tmp_path / "vit.onnx", (1, 3, 32, 32), axes={"images": {0: "batch"}})
    e = Explainer(path, quiet=True)
    from onnxplain.autolayer import candidates, class_token_only
    last = candidates(e.model, e.output_name(None))[0]
    assert last.layout == "tokens" and class_token_only(e.model, last.name)
    image = np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    [a] = e.explain(image, method="recipro-cam")
    assert a.layer != last.name and "read only at the class token" in a.extras["auto_layer"]
    assert a.warnings == () and float(a.raw.max() - a.raw.min()) > 1e-6


class FlattenNet(nn.Module):
    """conv -> relu -> conv -> flatten -> linear: dynamo bakes the batch (1) into the Reshape's constant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.reshape(x.shape[0], -1))


def test_static_batch_dynamo_export_runs_tail_methods(tmp_path):
    path = tmp_path / "static.onnx"
    torch.onnx.export(FlattenNet().eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=True)
    assert any(n.op_type == "Reshape" for n in onnx.load(str(path)).graph.node)
    e = Explainer(path, quiet=True, preprocess="raw01")
    images = [np.random.default_rng(s).integers(0, 255, (32, 32, 3), dtype=np.uint8) for s in (4, 5)]
    for method in ("recipro-cam", "ablation-cam"):
        both = e.explain(images, method=method, target=0)
        one = e.explain(images[1], method=method, target=0)
        np.testing.assert_allclose(both[1].raw, one[0].raw, rtol=1e-5, atol=1e-6)


def test_unreadable_maps_carry_a_warning():
    assert map_warnings(np.zeros((4, 4)))[0].startswith("The map is all zero")
    assert map_warnings(np.full((4, 4), 0.5))[0] == ("The map is constant (0.5 everywhere): it says nothing about "
                                                     "where; try another layer (--layer), target or method.")
    assert map_warnings(np.array([[np.nan, 1.0]]))[0].startswith("The map has 50% non-finite values")
    assert map_warnings(np.eye(3)) == []


def test_metadata_readers():
    assert ultralytics_names("{0: 'person', 2: 'car', 1: 'bike'}") == ["person", "bike", "car"]
    assert size_of("[640, 640]") == (640, 640) and size_of("48x320") == (48, 320) and size_of(640) == (640, 640)
    assert paddle_dictionary("a\nb\n") == ["blank", "a", "b", " "]
    assert paddle_dictionary("['x', 'y']") == ["blank", "x", "y", " "]
    with pytest.raises(UserError, match="^Option resize cannot be 'fit'; use one of stretch, crop, letterbox.$"):
        from onnxplain.task import check_option
        check_option("resize", "fit", ("stretch", "crop", "letterbox"))
