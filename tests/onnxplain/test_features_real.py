"""Feature jobs on the bundled EfficientNet-Lite0 (preset and labels from its metadata) and real photos.

The folder is built at test time from scikit-image's photos plus flips and crops of them.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import onnxplain
from onnxplain.features import dead_filters, embed, filters, neighbours, receptive_fields
from onnxplain.cli.features import features

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = ["chelsea", "astronaut", "coffee", "rocket", "immunohistochemistry"]
VARIANTS = ["full", "flip", "centre", "corner"]


def variants(image: np.ndarray) -> dict[str, np.ndarray]:
    """The photo, its mirror image, a centre crop (70%) and a top-left crop (80%)."""
    h, w = image.shape[:2]
    return {"full": image, "flip": image[:, ::-1],
            "centre": image[int(0.15 * h):int(0.85 * h), int(0.15 * w):int(0.85 * w)],
            "corner": image[:int(0.8 * h), :int(0.8 * w)]}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        for kind, image in variants(getattr(skimage_data, name)()).items():
            cv2.imwrite(str(folder / f"{name}.{kind}.png"), cv2.cvtColor(np.ascontiguousarray(image),
                                                                          cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def effnet_explainer(effnet):
    return onnxplain.load(effnet, quiet=True, device="cpu", batch_size=8)


@pytest.mark.parametrize("layer", ["auto", "/_avg_pooling/GlobalAveragePool_output_0"])
def test_a_crop_finds_another_view_of_its_photo(effnet_explainer, photos, layer):
    """Each crop's 3 nearest (itself left out, cosine) are the other views of its photo (margins ~0.5 measured)."""
    embedding = embed(effnet_explainer, photos, layer)
    assert embedding.vectors.shape == (20, 1280) and embedding.labels[0]   # labels from the model's metadata
    crops = [i for i, n in enumerate(embedding.names) if n.endswith((".centre.png", ".corner.png"))]
    for result in neighbours(embedding, crops, k=3):
        photo = Path(result.query).name.split(".")[0]
        assert [Path(n).name.split(".")[0] for n in result.names] == [photo] * 3, result


def test_predicted_classes_come_with_label_names(effnet_explainer, photos):
    """The cat photo's embedding row carries an ImageNet cat class."""
    embedding = embed(effnet_explainer, [photos / "chelsea.full.png"])
    assert "cat" in embedding.labels[0].lower()


def test_receptive_fields_of_efficientnet(effnet_explainer):
    """Stem: 3x3 stride 2; the auto layer (7x7 map) has stride 32 and sees beyond the 224 input; pooled is global."""
    model = effnet_explainer.model
    fields = receptive_fields(model)
    stem = fields["/_conv_stem/Conv_output_0"]
    assert stem.size == (3, 3) and stem.stride == (2, 2)
    auto = fields[model.auto_layer()[0]]
    assert auto.stride == (32, 32) and auto.size[0] > 224 and auto.box(3, 3) == (0, 0, 224, 224)
    assert fields["/_avg_pooling/GlobalAveragePool_output_0"].is_global
    sizes = [fields[t.name].size[0] for t in model.spatial_layers]
    assert sizes == sorted(sizes)   # a plain chain with residual adds: fields only grow


def test_first_conv_filters_and_dead_clip_layers(effnet_explainer, photos):
    """32 colour stem filters; ReLU6 layers are Clip(0, 6) and marked post-ReLU in the dead-filter report."""
    stem = filters(effnet_explainer)
    assert stem.colour and len(stem.tiles) == 32 and stem.shape == (32, 3, 3, 3)
    layers = ["/_swish/Clip_output_0", "/_conv_head/Conv_output_0"]
    report = dead_filters(effnet_explainer, photos, layers=layers)
    clip, conv = report.layers
    assert clip.relu == "Clip" and conv.relu is None and clip.channels == 32 and conv.channels == 1280
    assert report.images == 20 and all(0 <= e.fraction <= 1 for e in report.layers)


def test_cli_top_k_on_real_photos(effnet, photos, tmp_path):
    """`features top-k` writes its grids and JSON; every box lies inside its original image."""
    out = tmp_path / "out"
    result = CliRunner().invoke(features, ["top-k", str(effnet), str(photos), "--channel", "7", "--k", "3",
                                           "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "topk.7.json").read_text())
    assert len(report["hits"]) == 3 and report["receptive_field"]["stride"] == [32, 32]
    for hit in report["hits"]:
        top, left, bottom, right = hit["original_box"]
        height, width = cv2.imread(hit["image"]).shape[:2]
        assert 0 <= top < bottom <= height and 0 <= left < right <= width
    assert (out / "topk.7.images.png").is_file() and (out / "topk.7.patches.png").is_file()
