"""Targets beyond classification: boxes on detector rows, regions on dense maps, callables, outputs by name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import helpers
import onnxplain
import real_models
from onnxplain.errors import TargetError
from onnxplain.images import preset
from onnxplain.targets import BoxLayout, BoxTarget, ClassTarget, RegionTarget, target_count


class TinyYolo(nn.Module):
    """A 32x32 detector on a 4x4 grid of 8-pixel cells: rows (cx, cy, w, h, obj, 2 class scores).

    Each cell's box is fixed (centre of the cell, 8x8); objectness and class scores are the
    mean brightness of that cell's red and green channels, so the answer is known.
    """

    def __init__(self, columns: bool = False):
        super().__init__()
        self.columns = columns
        ys, xs = torch.meshgrid(torch.arange(4) * 8 + 4.0, torch.arange(4) * 8 + 4.0, indexing="ij")
        boxes = torch.stack([xs.flatten(), ys.flatten(), torch.full((16,), 8.0), torch.full((16,), 8.0)], 1)
        self.register_buffer("boxes", boxes)

    def forward(self, x):
        cells = nn.functional.avg_pool2d(x, 8).flatten(2).transpose(1, 2)  # (N, 16, 3)
        obj = torch.sigmoid(cells[..., :1] * 4)
        rows = torch.cat([self.boxes.expand(x.shape[0], 16, 4), obj, cells[..., :2]], dim=2)  # (N, 16, 7)
        return rows.transpose(1, 2) if self.columns else rows


class TwoHeads(nn.Module):
    """RegionNet's classifier plus a second output: a 2-channel dense map (background, foreground)."""

    def __init__(self):
        super().__init__()
        self.net = helpers.RegionNet()
        self.seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))

    def forward(self, x):
        return self.net(x), self.seg(x)


def export_named(model, path, outputs):
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=outputs,
                      dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
    return path


def bright_cell_image(row: int, col: int) -> np.ndarray:
    image = np.full((32, 32, 3), 20, np.uint8)
    image[row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = (250, 240, 10)
    return image


@pytest.mark.parametrize("columns", [False, True])
def test_box_target_picks_the_matching_row_and_its_score(columns, tmp_path):
    path = export_named(TinyYolo(columns), tmp_path / "yolo.onnx", ["rows"])
    explainer = onnxplain.load(path, preprocess="raw01", quiet=True)
    layout = BoxLayout(axis="columns" if columns else "rows", objectness=True)
    image = bright_cell_image(1, 2)  # cell 6: box x 16..24, y 8..16
    context_outputs = explainer.forward(explainer.prepare([image]))
    from onnxplain.targets import Context, resolve
    [[target]] = resolve("box:17,9,23,15:0", Context(context_outputs, "rows", input_hw=(32, 32), box_layout=layout))
    assert isinstance(target, BoxTarget) and target.row == 6 and target.index == 0
    rows = context_outputs["rows"] if not columns else context_outputs["rows"].transpose(0, 2, 1)
    expected = rows[0, 6, 5] * rows[0, 6, 4]  # class 0 score x objectness
    assert target.score(context_outputs)[0] == pytest.approx(expected, rel=1e-6)
    [[top]] = resolve("box:#0", Context(context_outputs, "rows", input_hw=(32, 32), box_layout=layout))
    assert top.row == 6  # the most confident box is the bright cell
    with pytest.raises(TargetError, match="No detection row overlaps"):
        resolve("box:100,100,120,120", Context(context_outputs, "rows", input_hw=(32, 32), box_layout=layout))


def test_box_target_explanation_peaks_in_the_box(tmp_path):
    path = export_named(TinyYolo(), tmp_path / "yolo.onnx", ["rows"])
    explainer = onnxplain.load(path, preprocess="raw01", quiet=True)
    image = bright_cell_image(1, 2)
    image[24:32, 0:8] = (250, 240, 10)  # a second bright cell the box target must ignore
    layout = BoxLayout(objectness=True)
    for method in ["occlusion", "rise"]:
        if method not in {m["name"] for m in onnxplain.list_methods()}:
            continue
        params = {"window": (8, 8), "stride": 8} if method == "occlusion" else {"n": 300, "grid": 4}
        [attribution] = explainer.explain([image], method=method, target="box:16,8,24,16:0", box_layout=layout,
                                          **params)
        r, c = helpers.peak(attribution.upsampled)
        assert 8 <= r < 16 and 16 <= c < 24, (method, r, c)


def test_outputs_chosen_by_name_and_region_target(tmp_path):
    path = export_named(TwoHeads(), tmp_path / "two.onnx", ["logits", "segmentation"])
    explainer = onnxplain.load(path, preprocess="raw01", quiet=True)
    kinds = {o.name: o.kind for o in explainer.task.outputs}   # task.classify_output's kinds
    assert kinds == {"logits": "class logits", "segmentation": "dense map"}
    images = helpers.random_images(1, seed=3)
    [on_logits] = explainer.explain(images, method="score-cam", target=2, output="logits")
    assert on_logits.target["output"] == "logits" and on_logits.target["index"] == 2
    [on_map] = explainer.explain(images, method="score-cam", layer="auto", output="segmentation",
                                 target="region:4,4,12,12:1")
    assert on_map.target["kind"] == "RegionTarget" and on_map.target["pixels"] == 64
    with pytest.raises(onnxplain.UserError, match="no output named 'nope'"):
        explainer.explain(images, method="score-cam", output="nope")
    with pytest.raises(TargetError, match="not a dense map"):
        explainer.explain(images, method="score-cam", output="logits", target="region:0,0,4,4")


def test_region_target_score_equals_masked_sum_numpy_and_torch():
    value = np.arange(2 * 2 * 4 * 4, dtype=np.float32).reshape(2, 2, 4, 4)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 2:4] = True
    target = RegionTarget("m", channel=1, mask=mask)
    expected = value[:, 1][:, mask].sum(1)
    np.testing.assert_allclose(target.score({"m": value}), expected)
    np.testing.assert_allclose(target.score({"m": torch.from_numpy(value)}).numpy(), expected)
    mean = RegionTarget("m", channel=1, mask=mask, reduce="mean")
    np.testing.assert_allclose(mean.score({"m": value}), expected / 4)


def test_callable_target(region_model):
    explainer = onnxplain.load(region_model, preprocess="raw01", quiet=True)
    images = helpers.random_images(2, seed=4)
    margin = lambda outputs: outputs["scores"][:, 0] - outputs["scores"][:, 1]  # noqa: E731
    attributions = explainer.explain(images, method="score-cam", target=margin)
    assert attributions[0].target["kind"] == "CallableTarget"
    x = explainer.prepare(images).x
    out = explainer.run(x, ["scores"])
    np.testing.assert_allclose(margin(out), out["scores"][:, 0] - out["scores"][:, 1])


def test_pnet_face_region_peaks_on_the_face():
    """MTCNN P-Net on skimage's astronaut at 64x64: the face-probability region's map peaks on the face.

    Face box measured by hand on the 512x512 original: x 170..280, y 60..185.
    """
    from skimage import data
    explainer = onnxplain.load(real_models.mtcnn_onnx("pnet"), quiet=True, input_size=(64, 64),
                               preprocess=preset("minus1to1", resize="stretch"))
    face = (170, 60, 280, 185)
    for method in ("recipro-cam", "occlusion", "grad-cam", "layer-cam", "saliency"):
        params = {"window": (8, 8), "stride": 4} if method == "occlusion" else {}
        [a] = explainer.explain([data.astronaut()], method=method, output="28", target="region:170,60,280,185:1",
                                **params)
        r, c = helpers.peak(a.heatmap)
        assert face[1] <= r <= face[3] and face[0] <= c <= face[2], (method, r, c)


def test_class_target_errors(region_model):
    explainer = onnxplain.load(region_model, preprocess="raw01", quiet=True)
    with pytest.raises(TargetError, match="out of range: output 'scores' has 3 classes"):
        explainer.explain(helpers.random_images(1), method="eigen-cam", target=3)
    with pytest.raises(TargetError, match="Cannot read target 'cats'"):
        explainer.explain(helpers.random_images(1), method="eigen-cam", target="cats")
    assert isinstance(ClassTarget("scores", index=1), ClassTarget)


LINES = {"title": (18, 30), "l1": (52, 64), "l2": (69, 82), "l3": (86, 99), "l4": (103, 116), "l5": (117, 128),
         "code": (165, 188)}  # text-line bands (rows) of skimage's page(), measured by hand on the 191x384 image


@pytest.mark.parametrize("line", ["l2", "l4"])
def test_ppocr_text_line_region_highlights_that_line(line):
    """PP-OCRv4's text detector on skimage's page(): a region target on one line's probability map puts the
    largest mean |attribution| on that line's band, not on the others (saliency and integrated gradients)."""
    from skimage import data
    explainer = onnxplain.load(real_models.ppocr_det(), quiet=True, input_size=(192, 384),
                               preprocess=preset("imagenet", resize="stretch"))
    y0, y1 = LINES[line]
    for method, params in (("saliency", {}), ("integrated-gradients", {"steps": 8})):
        [a] = explainer.explain([data.page()], method=method, target=f"region:20,{y0},360,{y1}", **params)
        means = {name: float(np.abs(a.heatmap[r0:r1]).mean()) for name, (r0, r1) in LINES.items()}
        assert max(means, key=means.get) == line, (method, means)


def test_target_count_known_without_a_forward(region_model):
    """topK gives K (at most the classes), all the classes (1 unknown), a list its largest entry, others 1; the
    Explainer's check_cost multiplies a once-per-target method's cost by it, as explain does."""
    assert [target_count(spec, 1000) for spec in ("top5", "all", "top2000", 7, "predicted", "box:1,2,3,4")] == \
        [5, 1000, 1000, 1, 1, 1]
    assert target_count("all", None) == 1 and target_count(["top2", 3, "top4"], 10) == 4
    ex = onnxplain.Explainer(region_model, quiet=True, max_forwards=100)
    assert ex.check_cost("smoothgrad", {"n": 40}, target=["top2", 1]) == 40
    with pytest.raises(onnxplain.errors.UserError, match=r"3 targets of about 40 forward passes each need about 120"):
        ex.check_cost("smoothgrad", {"n": 40}, target="all")
    assert ex.check_cost("rise", {"n": 90}, target="all") == 90  # every target from one run
