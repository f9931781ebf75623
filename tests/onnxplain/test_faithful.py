"""Issue 19's faithfulness checks: FullGrad's complete decomposition, Smooth Grad-CAM++ as the paper
(filters, neurons, n = 0, the constant-gradient warning), CAM on per-class score maps, the Clip rule at
the upper bound. Tolerances are stated per test."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import helpers
from onnxplain import Explainer


class SaturatingNet(nn.Module):
    """Every piecewise-linear op with a bias: ReLU6 (saturating), BatchNorm kept apart from any Conv,
    HardSigmoid, LeakyReLU, PReLU, a constant subtracted from the input, max pooling and a biased Linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.prelu = nn.PReLU(8)
        self.conv3 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 5)
        with torch.no_grad():
            self.conv1.weight.mul_(6.0)  # drive many ReLU6 units past 6
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
            self.prelu.weight.uniform_(0.05, 0.3)

    def forward(self, x):
        x = nn.functional.relu6(self.conv1(x - 0.25))
        x = self.bn(x)
        x = nn.functional.hardsigmoid(self.conv2(x)) * 4.0
        x = nn.functional.leaky_relu(x, 0.1)
        x = nn.functional.max_pool2d(self.prelu(x), 2)
        x = nn.functional.avg_pool2d(self.conv3(x), 2)
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def saturating(tmp_path_factory) -> Explainer:
    path = helpers.export(SaturatingNet(), tmp_path_factory.mktemp("sat") / "sat.onnx")
    return Explainer(path, device="cpu", quiet=True)


def photos(n: int = 2, size: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


# ---- FullGrad -------------------------------------------------------------------------------------
def test_fullgrad_completeness_on_a_relu6_net(saturating):
    """Input term + every bias term (Conv, BatchNorm, Sub, Clip, HardSigmoid, Gemm) = the logit, within 1e-3."""
    ops = {n.op_type for n in saturating.model.proto.graph.node}
    assert {"Clip", "BatchNormalization", "HardSigmoid", "LeakyRelu", "PRelu", "Sub", "Gemm"} <= ops
    for a in saturating.explain(photos(), method="fullgrad", target=[1, 3]):
        check = a.extras["completeness"]
        assert abs(check["sum"] - check["output"]) <= 1e-3, check
        assert abs(a.extras["bias_terms"]["Clip"]) > 1e-2  # saturated units carry a real share
        assert {"Conv", "BatchNormalization", "Sub", "Clip", "HardSigmoid", "Gemm"} <= set(a.extras["bias_terms"])
        assert a.raw.shape == (32, 32) and np.isfinite(a.raw).all()


def test_fullgrad_completeness_on_effnet_lite0(effnet):
    """EfficientNet-Lite0 on chelsea: the decomposition closes on the logit within 1e-3 (it missed 72 % before
    the saturated ReLU6 units were counted); the pytorch-grad-cam mode gives a different, scaled map."""
    import skimage.data
    explainer = Explainer(effnet, device="cpu", quiet=True)
    [a] = explainer.explain(skimage.data.chelsea(), method="fullgrad")
    check = a.extras["completeness"]
    assert abs(check["sum"] - check["output"]) <= 1e-3, check
    assert check["output"] > 5 and a.extras["bias_terms"]["Clip"] > 1.0
    [legacy] = explainer.explain(skimage.data.chelsea(), method="fullgrad", mode="pytorch-grad-cam")
    assert legacy.raw.max() <= 1.0 + 1e-6 and not np.allclose(legacy.raw, a.raw / a.raw.max(), atol=1e-2)


# ---- Smooth Grad-CAM++ ------------------------------------------------------------------------------
def test_smooth_grad_cam_pp_warns_where_smoothing_cannot_change_the_map(effnet):
    """At EfficientNet-Lite0's last map (GAP then Gemm) the logit's gradient is constant: a warning, and the map
    equals n=0's; at an inner layer the gradient varies and no warning is given."""
    import skimage.data
    explainer = Explainer(effnet, device="cpu", quiet=True)
    photo = skimage.data.chelsea()
    layer = explainer.model.auto_layer()[0]
    [smooth] = explainer.explain(photo, method="smooth-grad-cam++", layer=layer, n=3, batch_size=3, target=281)
    [plain] = explainer.explain(photo, method="smooth-grad-cam++", layer=layer, n=0, target=281)
    assert "smoothing cannot change the map" in smooth.warnings[0]
    np.testing.assert_allclose(smooth.raw, plain.raw, rtol=1e-4, atol=1e-6 * plain.raw.max())
    inner = "/_blocks.15/_project_conv/Conv_output_0"
    [varying] = explainer.explain(photo, method="smooth-grad-cam++", layer=inner, n=2, batch_size=2, target=281)
    assert "warnings" not in varying.extras


# ---- CAM on per-class score maps ------------------------------------------------------------------------
class ScoreMapNet(nn.Module):
    """Features, a 1x1 Conv making one score map per class (5), then global max or average pooling."""

    def __init__(self, pool: str):
        super().__init__()
        torch.manual_seed(2)
        self.features = nn.Conv2d(3, 8, 3, padding=1, stride=2)
        self.scores = nn.Conv2d(8, 5, 1)
        self.pool = nn.AdaptiveMaxPool2d(1) if pool == "max" else nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.scores(torch.relu(self.features(x)))).flatten(1)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_cam_reads_per_class_score_maps_with_global_pooling(pool, tmp_path):
    """The map is the class's score map (relative 1e-5 against torch), from the 1x1 Conv's input or from the score
    maps themselves; its max (max pooling) or mean (average pooling) is the logit within 1e-5."""
    net = ScoreMapNet(pool).eval()
    ex = Explainer(helpers.export(net, tmp_path / f"scoremap_{pool}.onnx"), device="cpu", quiet=True)
    relu_out = next(t.name for t in ex.model.layers if t.op_type == "Relu")
    score_maps = next(t.name for t in ex.model.layers if t.op_type == "Conv" and t.shape[1] == 5)
    images = photos(1)
    x = torch.tensor(ex.prepare(images).x)
    with torch.no_grad():
        expected = net.scores(torch.relu(net.features(x)))[0, 3].numpy()
        logit = float(net(x)[0, 3])
    reduce = np.max if pool == "max" else np.mean
    for layer in (relu_out, score_maps):
        [a] = ex.explain(images, method="cam", target=3, layer=layer, relu=False)
        assert np.abs(a.raw - expected).max() <= 1e-5 * np.abs(expected).max(), layer
        assert abs(reduce(a.raw) - logit) <= 1e-5 * max(abs(logit), 1)
    assert "Pool" in a.extras["head"] or "MaxPool" in a.extras["head"]


# ---- rendering ----------------------------------------------------------------------------------------------
def test_nothing_is_drawn_outside_the_crop(saturating, tmp_path):
    """A 32x80 photo under the crop preset (shorter side to 32 * 256/224, centre crop 32): the model sees about the
    centre 28x28 pixels only. The heatmap is 0 and the
    overlay the dim grey photo outside it (exactly), the validity mask is saved beside the heatmap, pixel maps
    get a 99th-percentile grayscale picture and guided backprop a colour one; unknown colormaps are refused."""
    from onnxplain import render
    from onnxplain.errors import RenderError
    photo = np.random.default_rng(3).integers(0, 256, (32, 80, 3), dtype=np.uint8)
    [a] = saturating.explain([photo], method="guided-backprop", target=2)
    assert a.valid.shape == (32, 80) and a.valid[3:28, 27:53].all() and a.valid.sum() <= 29 * 29
    assert not a.valid[:, :25].any() and not a.valid[:, 55:].any() and not a.valid[[0, 31]].any()
    assert np.all(a.heatmap[~a.valid] == 0)
    grey = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    picture = a.overlay()
    assert np.abs(picture[~a.valid].astype(float) - np.round(grey[~a.valid])[:, None] // 2).max() <= 1
    files = a.save(str(tmp_path / "gb"))
    np.testing.assert_array_equal(np.load(files["valid"]), a.valid)
    assert {"gradient", "color"} <= set(files)
    gradient = render.gradient_picture(a.heatmap, a.valid)
    assert gradient[~a.valid].max() == 0 and gradient[a.valid].max() == 255
    with pytest.raises(RenderError, match="Unknown colormap 'bwrr'; use one of jet, turbo"):
        a.save(str(tmp_path / "bad"), colormap="bwrr")
    signed = render.colorize_signed(np.array([[-2.0, 0.0, 1.0]]))
    assert min(signed[0, 1]) >= 250 and signed[0, 0, 2] > signed[0, 0, 0]  # 0 is white, - is blue
