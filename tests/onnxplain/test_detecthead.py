"""The auto layer on detectors skips the detection head (prediction convs, their decoding, YOLOv8's box/class
conv branches) and takes the last backbone/neck map, as pytorch-grad-cam's YOLO tutorials do (`model.model[-2]`);
classifiers and dense-map models keep their pick. Tiny torch models exported by the legacy exporter, so tensor
names follow the module path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from onnxplain import Explainer
from onnxplain.detecthead import head_tensors
from test_cli_models import Yolo
from test_task import _export

YOLO_META = {"names": "{0: 'person', 1: 'bicycle', 2: 'car'}", "imgsz": "[96, 96]", "stride": "4", "task": "detect",
             "batch": "1"}


def conv(cin, cout, k=3, s=1):
    """Conv + SiLU, as ultralytics' Conv block (BatchNorm folded away by the export)."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.SiLU())


class Block(nn.Module):
    """A C2f-like block: split, a bottleneck, concat, a 1x1 conv."""

    def __init__(self, c):
        super().__init__()
        self.m, self.cv = conv(c // 2, c // 2), conv(c + c // 2, c, 1)

    def forward(self, x):
        a, b = x.chunk(2, 1)
        return self.cv(torch.cat([a, b, self.m(b)], 1))


class V8(nn.Module):
    """Two scales (stride 8, 16) and YOLOv8's Detect: per scale a box branch and a class branch of two 3x3
    conv+SiLU and a 1x1 prediction conv, concatenated into N x (4*4 + C) x A, DFL-free for brevity."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(conv(3, 8, 3, 2), conv(8, 16, 3, 2), conv(16, 16, 3, 2))
        self.down = conv(16, 32, 3, 2)
        self.p3, self.p4 = Block(16), Block(32)
        self.box = nn.ModuleList(nn.Sequential(conv(c, 16), conv(16, 16), nn.Conv2d(16, 16, 1)) for c in (16, 32))
        self.cls = nn.ModuleList(nn.Sequential(conv(c, 16), conv(16, 16), nn.Conv2d(16, classes, 1))
                                 for c in (16, 32))

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(self.down(p3))
        rows = [torch.cat([b(p), c(p)], 1).flatten(2) for p, b, c in zip((p3, p4), self.box, self.cls)]
        out = torch.cat(rows, 2)
        return torch.cat([out[:, :16], out[:, 16:].sigmoid()], 1)


class V5(nn.Module):
    """YOLOv5's Detect: per scale one 1x1 conv to anchors x (5 + C), reshaped to N x A x (5 + C), sigmoid."""

    def __init__(self, classes=3, anchors=3):
        super().__init__()
        torch.manual_seed(0)
        self.na, self.no = anchors, 5 + classes
        self.stem = nn.Sequential(conv(3, 8, 3, 2), conv(8, 16, 3, 2), conv(16, 16, 3, 2))
        self.down = conv(16, 32, 3, 2)
        self.p3, self.p4 = Block(16), Block(32)
        self.m = nn.ModuleList(nn.Conv2d(c, anchors * self.no, 1) for c in (16, 32))

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(self.down(p3))
        rows = []
        for p, m in zip((p3, p4), self.m):
            t = m(p)
            n, _, h, w = t.shape
            rows.append(t.view(n, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).reshape(n, -1, self.no).sigmoid())
        return torch.cat(rows, 1)


class ResLike(nn.Module):
    """A classifier whose last map is a residual Add + ReLU before global pooling and a linear layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.conv = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        return self.fc(torch.relu(s + self.conv(s)).mean((2, 3)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("heads")


def test_yolo_export_picks_the_backbone_map_not_the_class_sigmoid(folder):
    """The test model of test_cli_models: the head conv (7 channels) and its class sigmoid are skipped."""
    path = _export(Yolo(), folder / "yolo.onnx", (1, 3, 96, 96), axes={"images": {0: "batch", 2: "height",
                                                                                   3: "width"}}, meta=YOLO_META)
    e = Explainer(path, quiet=True)
    name, why = e.model.auto_layer()
    assert name == "/backbone/backbone.3/Relu_output_0"
    assert why.startswith("guessed: the last feature map before the detection head (NCHW map, op Relu)")
    assert "skipped the detection head's 2 maps" in why and "'/head/Conv_output_0'" in why
    assert set(head_tensors(e.model, e.model.outputs[0].name)) >= {"/head/Conv_output_0", "/Sigmoid_4_output_0"}
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    [a] = e.explain(image, method="grad-cam")
    assert a.layer == name and a.raw.shape == (24, 24) and a.extras["auto_layer"].startswith("guessed: ")


def test_yolov8_head_branches_are_skipped_for_the_last_neck_block(folder):
    """Each scale's box and class branches (3x3 convs after the shared map) are head; the last neck block's
    output, which both branches of its scale read, is the layer (pytorch-grad-cam's model.model[-2])."""
    model = Explainer(_export(V8(), folder / "v8.onnx", (1, 3, 128, 128), meta=YOLO_META), quiet=True).model
    name, _ = model.auto_layer()
    assert name == "/p4/cv/cv.1/Mul_output_0"
    head = head_tensors(model, model.outputs[0].name)
    assert {"/cls.1/cls.1.0/cls.1.0.1/Mul_output_0", "/cls.1/cls.1.1/cls.1.1.1/Mul_output_0",
            "/box.0/box.0.0/box.0.0.0/Conv_output_0", "/cls.1/cls.1.2/Conv_output_0"} <= set(head)
    assert sum(t.name in head for t in model.spatial_layers) == 28  # 2 scales x 2 branches x (2 conv+SiLU blocks of 3 tensors + the prediction conv)
    assert not {"/p4/cv/cv.1/Mul_output_0", "/p3/cv/cv.1/Mul_output_0", "/down/down.1/Mul_output_0"} & set(head)


def test_yolov5_prediction_conv_is_skipped_but_not_the_block_before_it(folder):
    """YOLOv5's head is one 1x1 conv per scale (anchors x (5 + C) channels) and its sigmoid; the C3-like block it
    reads is a merge (Concat), so it stays a feature layer."""
    model = Explainer(_export(V5(), folder / "v5.onnx", (1, 3, 128, 128)), quiet=True).model
    assert model.auto_layer()[0] == "/p4/cv/cv.1/Mul_output_0"
    assert set(head_tensors(model, model.outputs[0].name)) >= {"/m.0/Conv_output_0", "/m.1/Conv_output_0"}


def test_classifier_and_dense_map_keep_their_pick(folder):
    model = Explainer(_export(ResLike(), folder / "res.onnx", (1, 3, 32, 32)), quiet=True).model
    assert head_tensors(model, model.outputs[0].name) == {}
    name, why = model.auto_layer()
    assert name == "/Relu_1_output_0" and why.startswith("last spatial tensor (NCHW map, op Relu)")
