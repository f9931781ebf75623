"""Zeiler & Fergus: single-neuron projections (deconvnet, guided) cropped to the receptive field, the top-k
grid of patches and projections, occlusion's neuron panel, and the class-map and panel pictures."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import helpers
import onnxplain
from onnxplain import render
from onnxplain.cli.features import features
from onnxplain.features.common import FeatureError
from onnxplain.features.projection import project_neuron
from onnxplain.features.topk import top_k


class TwoConv(nn.Module):
    """conv3 (3->4) relu -> conv3 stride 2 (4->5) relu -> GAP -> linear (3 classes), 16x16 input: a layer-2
    position sees a 5x5 input box (3 + 2 * 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            self.conv1.bias.fill_(0.2)
            self.conv2.bias.fill_(0.1)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(y.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def two_conv(tmp_path_factory):
    path = helpers.export(TwoConv(), tmp_path_factory.mktemp("zf") / "two.onnx", shape=(1, 3, 16, 16))
    explainer = onnxplain.load(path, preprocess="raw01", quiet=True, batch_size=4)
    layer = [t.name for t in explainer.model.layers if t.op_type == "Relu"][1]
    return explainer, layer


def images(n: int = 4) -> list[np.ndarray]:
    return [np.random.default_rng(10 + i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_projection_of_one_neuron_is_zero_outside_its_receptive_field(two_conv, rule):
    """Neuron (channel 2, row 3, col 4) of the second ReLU sees input rows 2*3-2..2*3+2 and columns 6..10 (its
    receptive field box): they hold every non-zero value of the projection, and it is non-zero there."""
    explainer, layer = two_conv
    prepared = explainer.prepare(images(1))
    gradient = project_neuron(explainer, prepared.x, prepared.spec.layout, layer, 2, (3, 4), rule)
    assert gradient.shape == (3, 16, 16)
    inside = np.zeros((16, 16), bool)
    inside[4:9, 6:11] = True
    assert np.abs(gradient[:, ~inside]).max() == 0
    assert np.abs(gradient[:, inside]).max() > 0
    field = onnxplain.features.receptive.receptive_field(explainer.model, layer)
    assert field.box(3, 4) == (4, 6, 9, 11)


def test_top_k_projections_grid_and_json(two_conv, tmp_path):
    """k = 3 with both rules: each hit keeps its projections cropped to its input box, the grid has 3 rows of
    (patch, deconvnet, guided) tiles (96 px, 2 px padding, 14 px labels) and the JSON names the rules."""
    explainer, layer = two_conv
    result = top_k(explainer, images(), layer, channel=1, k=3, project=["deconvnet", "guided"])
    for hit in result.hits:
        top, left, bottom, right = hit.input_box
        assert set(hit.projections) == {"deconvnet", "guided"}
        assert all(p.shape == (3, bottom - top, right - left) for p in hit.projections.values())
    files = result.save(tmp_path / "topk")
    grid = cv2.imread(files["projections"])
    assert grid.shape[:2] == (3 * (96 + 14 + 2) + 2, 3 * (96 + 2) + 2)
    assert json.loads(Path(files["json"]).read_text())["project"] == ["deconvnet", "guided"]
    with pytest.raises(FeatureError, match="Unknown projection 'plain'"):
        top_k(explainer, images(), layer, channel=1, project=["plain"])


def test_cli_top_k_project_writes_the_projection_grid(two_conv, tmp_path):
    explainer, layer = two_conv
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images(3)):
        cv2.imwrite(str(folder / f"{i}.png"), image)
    result = CliRunner().invoke(features, ["top-k", str(explainer.model.path), str(folder), "-l", layer, "-c", "0",
                                           "--k", "2", "--project", "guided", "--preset", "raw01",
                                           "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(tmp_path / "out" / "topk.0.projections.png"))
    assert grid.shape[:2] == (2 * (96 + 14 + 2) + 2, 2 * (96 + 2) + 2)


def test_occlusion_neuron_panel_equals_a_hand_loop(two_conv):
    """activation_channel=3 at its strongest position: the panel is that neuron's value with each 4x4 window
    (stride 4) set to 0, from one onnxruntime forward per window (exact to 1e-6)."""
    explainer, layer = two_conv
    photo = images(1)[0]
    [attribution] = explainer.explain(photo, method="occlusion", target=0, window=4, stride=4,
                                      activation_layer=layer, activation_channel=3)
    extras = attribution.extras
    x = explainer.prepare([photo]).x
    clean = explainer.run(x, [layer])[layer][0, 3]
    row, col = np.unravel_index(clean.argmax(), clean.shape)
    assert extras["neuron_channel"] == 3 and tuple(extras["neuron_position"]) == (row, col)
    expected = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            occluded = x.copy()
            occluded[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = 0
            expected[i, j] = explainer.run(occluded, [layer])[layer][0, 3, row, col]
    np.testing.assert_allclose(extras["neuron_activation"], expected, atol=1e-6)
    [fixed] = explainer.explain(photo, method="occlusion", target=0, window=4, stride=4, activation_layer=layer,
                                activation_channel=3, activation_position=(0, 0))
    assert tuple(fixed.extras["neuron_position"]) == (0, 0)
    with pytest.raises(onnxplain.errors.MethodError, match="needs an activation_layer"):
        explainer.explain(photo, method="occlusion", target=0, activation_channel=3)


def test_class_map_and_panels_are_saved_at_image_size_with_legends(two_conv, tmp_path):
    """class_map.png is the image's size plus one 16 px legend line per class (each class's palette colour
    present in the legend); panels (drops, neuron) are the image's size plus a 28 px colour bar."""
    explainer, layer = two_conv
    photo = cv2.resize(images(1)[0], (40, 32))
    [attribution] = explainer.explain(photo, method="occlusion", target=0, window=4, stride=4, class_map=True,
                                      activation_layer=layer, activation_channel=0)
    files = attribution.save(str(tmp_path / "occ"))
    legend = attribution.extras["class_legend"]
    picture = cv2.cvtColor(cv2.imread(files["class_map"]), cv2.COLOR_BGR2RGB)
    assert picture.shape == (32 + 16 * len(legend) + 4, 40, 3)
    strip = picture[32:]
    for i in range(len(legend)):
        assert (strip == render.PALETTE[i]).all(-1).any()
    for key in ("drops", "neuron_activation"):
        assert cv2.imread(files[key]).shape == (32 + 28, 40, 3)


def test_panel_sits_on_the_seen_box_and_leaves_the_rest_grey():
    """With a validity mask covering columns 10..29, the panel fills exactly that box; outside it the photo
    is dim grey (half its luminance)."""
    image = np.full((20, 40, 3), 200, np.uint8)
    valid = np.zeros((20, 40), bool)
    valid[:, 10:30] = True
    picture = render.panel_picture(np.arange(4.0).reshape(2, 2), image, valid)
    assert picture.shape == (48, 40, 3)
    assert (picture[:20, :10] == 100).all() and (picture[:20, 30:] == 100).all()
    low, high = render.colorize(np.array([[0.0, 1.0]]), "viridis")[0]
    assert (picture[:10, 10:20] == low).all() and (picture[10:20, 20:30] == high).all()


def test_activation_grid_shared_scale_and_labels_that_fit(two_conv):
    """shared=True puts every tile on the layer's one range (the weakest channel's tile stays darker than the
    strongest's peak) and adds a 28 px colour bar; each label is drawn inside its own tile's width."""
    from onnxplain.features.activations import activations

    explainer, layer = two_conv
    result = activations(explainer, images(1)[0], layer)
    own, shared = result.grid(32), result.grid(32, shared=True)
    assert shared.shape == (own.shape[0] + 28, own.shape[1], 3)
    for text in (f"{s['channel']}:{s['max']:.3g}" for s in result.stats):
        label, scale = render.fitted_label(text + "-a-long-suffix", 32)
        assert cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= 32 and scale >= 0.3
    low, high = float(result.maps.min()), float(result.maps.max())
    columns = int(np.ceil(np.sqrt(len(result.maps))))
    for c, m in enumerate(result.maps):
        r, k = divmod(c, columns)
        y, x = 2 + r * (32 + 14 + 2), 2 + k * (32 + 2)
        expected = cv2.resize(render.colorize((m - low) / (high - low), "viridis"), (32, 32),
                              interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(shared[y:y + 32, x:x + 32], expected)
