"""Feature jobs on tiny nets exported at test time: activations, dead filters, kernels, top-k, embeddings, CLI."""
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
from onnxplain.errors import TensorNameError
from onnxplain.features import (Embedding, FeatureError, activations, dead_filters, embed, filters, grid_assignment,
                                image_map, neighbours, neighbours_grid, scatter_plot, to_original_box, top_k, tsne)
from onnxplain.cli.features import features
from onnxplain.images import PixelMap


# ---- tiny nets ------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """conv3 (3->4) relu -> maxpool 2 -> conv3 (4->6) relu6 -> GAP -> linear (3 classes).

    conv1 filter 0 sees only red and filter 1 only blue (positive 3x3 kernels); channels listed in
    `dead1` / `dead2` are zeroed with bias -1, so they never pass the ReLU.
    """

    def __init__(self, dead1=(), dead2=(), seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)
        with torch.no_grad():
            self.conv1.weight[:2] = 0
            self.conv1.weight[0, 0] = 0.5
            self.conv1.weight[1, 2] = 0.5
            self.conv1.bias.fill_(0.5)
            self.conv2.weight.mul_(0.01)
            self.conv2.bias.fill_(0.5)
            for c in dead1:
                self.conv1.weight[c] = 0
                self.conv1.bias[c] = -1
            for c in dead2:
                self.conv2.weight[c] = 0
                self.conv2.bias[c] = -1

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = F.relu6(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class ChannelsLastNet(nn.Module):
    """A conv whose ReLU runs on an NHWC tensor (as tf2onnx graphs do), then back to NCHW."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        y = torch.relu(self.conv(x).permute(0, 2, 3, 1))
        return self.fc(y.mean(dim=(1, 2)))


class TokenNet(nn.Module):
    """4x4 patches -> tokens (N, 64, 8) -> linear + relu (a token layer) -> mean -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc(torch.relu(self.mix(tokens)).mean(dim=1))


class ColourNet(nn.Module):
    """1x1 identity conv + relu (the auto layer: mean colour after pooling) -> GAP -> linear (3 classes)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3)[:, :, None, None])
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.eye(3))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, TinyNet]:
    net = TinyNet(dead1=(2,), dead2=(1, 4))
    return helpers.export(net, tmp_path_factory.mktemp("tiny") / "tiny.onnx"), net


def layer_of(explainer, op: str, nth: int = 0) -> str:
    return [t.name for t in explainer.model.layers if t.op_type == op][nth]


def write_images(folder: Path, images: list[np.ndarray], prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"{prefix}{i:02d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


# ---- activations ----------------------------------------------------------------------------
def test_activation_stats_equal_numpy_on_the_torch_model(tiny, tmp_path):
    """Stats of the post-ReLU map equal numpy's on the torch model's own tensor (atol 1e-5)."""
    path, net = tiny
    explainer = onnxplain.load(path, preprocess="raw01", quiet=True)
    image = helpers.random_images(1, size=32, seed=3)[0]
    layer = layer_of(explainer, "Relu")
    result = activations(explainer, image, layer)
    x = torch.from_numpy(explainer.prepare(image).x)
    with torch.no_grad():
        expected = torch.relu(net.conv1(x))[0].numpy()
    assert result.maps.shape == (4, 32, 32) and result.layout == "NCHW"
    np.testing.assert_allclose(result.maps, expected, atol=1e-5)
    for stats, channel in zip(result.stats, expected):
        assert stats["mean"] == pytest.approx(channel.mean(), abs=1e-5)
        assert stats["max"] == pytest.approx(channel.max(), abs=1e-5)
        assert stats["min"] == pytest.approx(channel.min(), abs=1e-5)
        assert stats["fraction_positive"] == pytest.approx((channel > 0).mean(), abs=1 / channel.size)
    assert result.stats[2]["max"] == 0 and result.stats[2]["fraction_positive"] == 0  # the dead channel
    files = result.save(tmp_path / "act")
    grid = cv2.imread(files["grid"])
    assert grid.shape[:2] == (2 * (64 + 14 + 2) + 2, 2 * 66 + 2)  # 4 tiles: 2x2, tile 64, label 14, pad 2
    assert json.loads(Path(files["stats"]).read_text())["channels"][0]["channel"] == 0


def test_activations_of_nhwc_and_token_layers_are_channels_first(tmp_path):
    """NHWC maps are transposed and token tensors reshaped to their grid (atol 1e-5)."""
    image = helpers.random_images(1, size=32, seed=4)[0]
    for net, kind in ((ChannelsLastNet(), "NHWC"), (TokenNet(), "tokens")):
        explainer = onnxplain.load(helpers.export(net, tmp_path / f"{kind}.onnx"), preprocess="raw01", quiet=True)
        layer = layer_of(explainer, "Relu")
        result = activations(explainer, image, layer)
        x = torch.from_numpy(explainer.prepare(image).x)
        with torch.no_grad():
            if kind == "NHWC":
                expected = torch.relu(net.conv(x))[0].numpy()
            else:
                tokens = torch.relu(net.mix(net.patch(x).flatten(2).transpose(1, 2)))[0]
                expected = tokens.T.reshape(8, 8, 8).numpy()
        assert result.layout == kind
        np.testing.assert_allclose(result.maps, expected, atol=1e-5)


def test_activations_reject_a_vector_layer(tiny):
    explainer = onnxplain.load(tiny[0], preprocess="raw01", quiet=True)
    with pytest.raises(TensorNameError, match="not a spatial map"):
        activations(explainer, helpers.random_images(1)[0], "scores")


# ---- dead filters ---------------------------------------------------------------------------
def test_dead_filters_finds_exactly_the_zeroed_channels(tiny, tmp_path):
    """conv1 channel 2 and conv2 channels 1, 4 were zeroed with bias -1: exactly those, after Relu and Clip."""
    path, _ = tiny
    explainer = onnxplain.load(path, preprocess="raw01", quiet=True, batch_size=3)
    write_images(tmp_path / "noise", helpers.random_images(7, size=32, seed=5))
    report = dead_filters(explainer, tmp_path / "noise")
    by_op = {e.op: e for e in report.layers}
    assert report.images == 7
    assert by_op["Relu"].dead == [2] and by_op["Relu"].relu == "Relu"
    assert by_op["MaxPool"].dead == [2] and by_op["MaxPool"].relu == "Relu"  # sign kept through the pool
    assert by_op["Clip"].dead == [1, 4] and by_op["Clip"].relu == "Clip"  # ReLU6 exports as Clip(0, 6)
    assert by_op["Conv"].relu is None
    assert {e.layer for e in report.flagged} == {by_op["Relu"].layer, by_op["MaxPool"].layer, by_op["Clip"].layer}
    assert "too-high learning rate" in report.text()
    only = dead_filters(explainer, tmp_path / "noise", layers=[by_op["Clip"].layer], warn_fraction=0.5)
    assert [e.dead for e in only.layers] == [[1, 4]] and not only.flagged
    assert json.loads(json.dumps(report.as_dict()))["layers"][1]["fraction"] == pytest.approx(0.25)


# ---- filters --------------------------------------------------------------------------------
def test_first_conv_tiles_are_colour_in_rgb_order(tiny):
    """Filter 0 sees only the model's channel 0, filter 1 only channel 2: red/blue for RGB models, swapped for BGR."""
    path, _ = tiny
    rgb = filters(onnxplain.load(path, preprocess="raw01", quiet=True))
    assert rgb.colour and len(rgb.tiles) == 4 and rgb.tiles[0].shape == (3, 3, 3)
    np.testing.assert_array_equal(rgb.tiles[0][1, 1], [255, 128, 128])   # red
    np.testing.assert_array_equal(rgb.tiles[1][1, 1], [128, 128, 255])   # blue
    bgr = filters(onnxplain.load(path, preprocess="caffe", quiet=True))
    np.testing.assert_array_equal(bgr.tiles[0][1, 1], [128, 128, 255])   # model channel 0 is blue
    np.testing.assert_array_equal(bgr.tiles[1][1, 1], [255, 128, 128])


def test_deeper_conv_tiles_are_gray_per_input_channel(tiny):
    """conv2 (6 filters x 4 inputs): 24 gray tiles, one row per filter; capped by max_filters / max_inputs."""
    explainer = onnxplain.load(tiny[0], preprocess="raw01", quiet=True)
    clip = layer_of(explainer, "Clip")   # the activation after conv2 leads back to conv2
    grid = filters(explainer, clip)
    assert not grid.colour and len(grid.tiles) == 24 and grid.columns == 4 and grid.shape == (6, 4, 3, 3)
    assert all((t[:, :, 0] == t[:, :, 1]).all() and (t[:, :, 1] == t[:, :, 2]).all() for t in grid.tiles)
    capped = filters(explainer, clip, max_filters=3, max_inputs=2)
    assert len(capped.tiles) == 6 and capped.labels[:3] == ["0:0", "0:1", "1:0"]
    assert grid.image(16).shape[1] == 4 * 18 + 2
    with pytest.raises(TensorNameError, match="does not come from a Conv"):
        filters(explainer, layer_of(explainer, "MaxPool"))


# ---- top-k ----------------------------------------------------------------------------------
class Brightness(nn.Module):
    """One 3x3 conv: channel 0 is the local mean brightness, channel 1 its negative."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.conv.weight[0] = 1 / 27
            self.conv.weight[1] = -1 / 27
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


def test_to_original_box_inverts_the_pixel_map():
    """Stretch by 0.5: input pixels 10..12 overlap original pixels 19..25; crop offsets shift back."""
    half = PixelMap(np.array([[0.5, 0, 0], [0, 0.5, 0]]), (64, 64), (32, 32))
    assert to_original_box(half, (10, 10, 13, 13)) == (19, 19, 26, 26)
    shifted = PixelMap(np.array([[1.0, 0, -4], [0, 1.0, -2]]), (40, 40), (32, 32))
    assert to_original_box(shifted, (0, 0, 3, 3)) == (2, 4, 5, 7)
    assert to_original_box(shifted, (30, 30, 32, 32)) == (32, 34, 34, 36)


def test_top_k_finds_the_bright_spot_and_cuts_its_receptive_field(tmp_path):
    """By max the spot image wins, its patch is the 3x3 field around the peak mapped back (x2); by mean the
    uniformly lit image wins."""
    images = [np.random.default_rng(i).integers(0, 40, (64, 64, 3), dtype=np.uint8) for i in range(5)]
    images[3][40:44, 20:24] = 255
    images[1][:] = 120
    paths = write_images(tmp_path / "spots", images)
    explainer = onnxplain.load(helpers.export(Brightness(), tmp_path / "bright.onnx"), preprocess="raw01",
                               quiet=True, batch_size=2)
    layer = explainer.model.outputs[0].name
    result = top_k(explainer, tmp_path / "spots", layer, channel=0, k=3)
    best = result.hits[0]
    assert best.image_name == str(paths[3]) and len(result.hits) == 3 and result.images == 5
    row, col = best.position
    assert 19 <= row <= 22 and 9 <= col <= 12
    assert best.input_box == (row - 1, col - 1, row + 2, col + 2)
    assert best.original_box == (2 * row - 3, 2 * col - 3, 2 * row + 4, 2 * col + 4)
    assert best.patch.shape == (7, 7, 3) and best.patch.max() == 255
    by_mean = top_k(explainer, paths, layer, channel=0, k=2, by="mean")
    assert by_mean.hits[0].image_name == str(paths[1])
    files = result.save(tmp_path / "out" / "topk")
    assert all(Path(f).is_file() for f in files.values())
    with pytest.raises(FeatureError, match="out of range"):
        top_k(explainer, paths, layer, channel=2)


# ---- embeddings, neighbours, maps -----------------------------------------------------------
def colour_classes(n_per_class: int = 6, size: int = 24) -> tuple[list[np.ndarray], list[int]]:
    """Noise images whose dominant colour is red, green or blue (the class), seeded."""
    rng = np.random.default_rng(7)
    images, classes = [], []
    for cls in range(3):
        for _ in range(n_per_class):
            image = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)
            image[:, :, cls] = rng.integers(120, 256, (size, size))
            images.append(image)
            classes.append(cls)
    return images, classes


@pytest.fixture(scope="module")
def colour_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("colours")
    images, classes = colour_classes()
    paths = write_images(folder / "set", images)
    explainer = onnxplain.load(helpers.export(ColourNet(), folder / "colour.onnx"), preprocess="raw01", quiet=True,
                               batch_size=4, labels=["red", "green", "blue"])
    return explainer, paths, classes


def test_neighbours_of_a_synthetic_set_share_the_query_class(colour_set, tmp_path):
    """Every query's 4 nearest (itself left out), cosine and L2, are of its class."""
    explainer, paths, classes = colour_set
    embedding = embed(explainer, paths[0].parent)
    assert embedding.vectors.shape == (18, 3) and embedding.pooled and embedding.predicted == classes
    assert embedding.labels[0] == "red"
    for metric in ("cosine", "l2"):
        for result, cls in zip(neighbours(embedding, list(range(18)), k=4, metric=metric), classes):
            assert result.query not in result.names
            assert [classes[i] for i in result.indices] == [cls] * 4
            assert result.distances == sorted(result.distances)
    by_file = neighbours(embedding, [paths[0], paths[7]], k=3, explainer=explainer)
    assert [classes[i] for r in by_file for i in r.indices] == [0] * 3 + [1] * 3
    assert 0 not in by_file[0].indices
    assert neighbours_grid(by_file, tile_size=32).shape[1] == 4 * 34 + 2
    saved = embedding.save(tmp_path / "emb.npy")
    loaded = Embedding.load(saved["vectors"])
    np.testing.assert_array_equal(loaded.vectors, embedding.vectors)
    assert loaded.names == [str(p) for p in paths] and loaded.layer == embedding.layer


def test_tsne_is_deterministic_with_a_seed(colour_set):
    """Same seed, same coordinates (exactly), from the PCA or a random start; a random start follows the seed."""
    explainer, paths, _ = colour_set
    embedding = embed(explainer, paths)
    first, again = tsne(embedding, seed=0), tsne(embedding, seed=0)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (18, 2)
    seeded = tsne(embedding, seed=3, init="random")
    np.testing.assert_array_equal(seeded, tsne(embedding, seed=3, init="random"))
    assert not np.array_equal(seeded, tsne(embedding, seed=4, init="random"))
    np.testing.assert_array_equal(tsne(embedding, method="pca"), tsne(embedding, method="pca"))
    with pytest.raises(FeatureError):
        tsne(embedding.vectors[:2])


def test_grid_assignment_takes_the_nearest_unused_image():
    """Four corner points on a 2x2 grid land in their corners; with more cells than images each image appears once."""
    corners = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # (x, y)
    np.testing.assert_array_equal(grid_assignment(corners, 2, 2), [[1, 2], [3, 0]])
    points = np.random.default_rng(0).normal(size=(7, 2))
    cells = grid_assignment(points, 3, 3)
    placed = cells[cells >= 0]
    assert sorted(placed) == list(range(7))


def test_scatter_plot_and_image_map_render(colour_set):
    explainer, paths, _ = colour_set
    embedding = embed(explainer, paths)
    coords = tsne(embedding, method="pca")
    plot = scatter_plot(coords, embedding.predicted, embedding.labels, size=400)
    assert plot.shape == (400, 660, 3)
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):   # three classes, three colours
        assert (plot == colour).all(axis=2).any()
    mosaic = image_map(coords, embedding.names, tile_size=16)
    assert mosaic.shape == (5 * 16, 5 * 16, 3)   # ceil(sqrt(18)) = 5 cells per side


# ---- CLI ------------------------------------------------------------------------------------
SUBCOMMANDS = ["activations", "dead", "filters", "top-k", "receptive", "embed", "neighbours", "tsne"]


def test_every_subcommand_has_help():
    runner = CliRunner()
    assert runner.invoke(features, ["--help"]).exit_code == 0
    for name in SUBCOMMANDS:
        result = runner.invoke(features, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name


def test_bad_layer_name_exits_2_with_one_sentence(tiny, tmp_path):
    image = write_images(tmp_path, helpers.random_images(1))[0]
    result = CliRunner().invoke(features, ["activations", str(tiny[0]), str(image), "--layer", "conv9",
                                           "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: The model has no tensor named 'conv9'")


def test_cli_runs_write_their_files(tiny, colour_set, tmp_path):
    """activations, filters, receptive, embed -> neighbours -> tsne on tiny models, each writing its files."""
    runner = CliRunner()
    path = str(tiny[0])
    image = str(write_images(tmp_path / "one", helpers.random_images(1))[0])
    out = tmp_path / "out"
    assert runner.invoke(features, ["activations", path, image, "--out", str(out)]).exit_code == 0
    assert (out / "img00.activations.png").is_file() and (out / "img00.activations.json").is_file()
    assert runner.invoke(features, ["filters", path, "--out", str(out)]).exit_code == 0
    assert (out / "filters.png").is_file()
    shown = runner.invoke(features, ["receptive", path])
    assert shown.exit_code == 0 and "8x8" in shown.output   # conv3 -> pool 2 -> conv3: 3, 4, 8
    _, paths, _ = colour_set
    model = str(paths[0].parent.parent / "colour.onnx")
    emb = str(tmp_path / "emb" / "vectors.npy")
    result = runner.invoke(features, ["embed", model, str(paths[0].parent), "--out", emb, "--preset", "raw01"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(features, ["neighbours", model, emb, str(paths[0]), "--k", "3", "--out", str(out),
                                      "--preset", "raw01"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "neighbours.json").read_text())["queries"][0]["neighbours"][0]["name"] != str(paths[0])
    result = runner.invoke(features, ["tsne", emb, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert all((out / f).is_file() for f in ("tsne.png", "tsne-grid.png", "tsne.json"))
