"""Deployed models through the CLI, as a new user runs them (issue 17): `inspect` and `explain` with no flags
on a YOLOv8-style export, an SSD-style detector, PP-OCR det/rec/cls, MTCNN P/R/O-Net and a static-batch
dynamo export; the task flags (--input-size, --resize, --order, --layout, --detector, --output) and the
box:, region: and char: targets given on the command line.

Face box on skimage's astronaut (512x512), measured by hand on a 2x crop: the skin from the eyebrows to the
chin, ears left out, is x 175..270, y 65..175. Text boxes are drawn with OpenCV, so they are known exactly.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from skimage import data
from torch import nn

import real_models
from onnxplain.cli import main
from test_task import FlattenNet, TinyViT, _export

FACE = (175, 65, 270, 175)  # x1, y1, x2, y2 on the astronaut
FACE_CROP = (145, 40, 300, 200)  # a proposal around the face, as P-Net hands R-Net and O-Net (x1, y1, x2, y2)


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.stderr, result.exception)
    return result


def explained(out) -> dict:
    """explain.json with each explanation's file names joined to the output folder they are relative to."""
    manifest = json.loads((out / "explain.json").read_text())
    for entry in manifest["explanations"]:
        entry["files"] = {kind: str(out / name) for kind, name in entry["files"].items()}
    return manifest


def raw_shape(entry: dict) -> list[int]:
    return list(np.load(entry["files"]["raw"]).shape)


def heatmap_peak(entry: dict) -> tuple[int, int]:
    """(row, column) of the heatmap's maximum, on the original image."""
    heat = np.load(entry["files"]["heatmap"])
    return tuple(int(v) for v in np.unravel_index(heat.argmax(), heat.shape))


def inside(point: tuple[int, int], box) -> bool:
    r, c = point
    return box[0] <= c <= box[2] and box[1] <= r <= box[3]


def save(path, image: np.ndarray) -> str:
    cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))
    return str(path)


def put_text(size, text, org, scale, thickness) -> np.ndarray:
    image = np.full(size + (3,), 255, np.uint8)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    return image


# ---- a YOLOv8-style export: decoded boxes in pixels, sigmoid class scores, ultralytics metadata --------------
class Yolo(nn.Module):
    """Stride-4 features -> (N, 4 + 3, A): cx, cy, w, h in input pixels (anchor centre + offset) and 3 class
    scores, as an ultralytics export writes them; the anchor grid follows the input size (symbolic H, W)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Conv2d(16, 7, 1)

    def forward(self, x):
        t = self.head(self.backbone(x))
        h, w = t.shape[2], t.shape[3]
        gy = torch.arange(h, dtype=torch.float32).view(1, h, 1).expand(1, h, w)
        gx = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(1, h, w)
        cx, cy = (gx + t[:, 0].sigmoid()) * 4, (gy + t[:, 1].sigmoid()) * 4
        bw, bh = 8 + 24 * t[:, 2].sigmoid(), 8 + 24 * t[:, 3].sigmoid()
        rows = torch.cat([torch.stack([cx, cy, bw, bh], 1), t[:, 4:].sigmoid()], 1)
        return rows.flatten(2)


@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    path = tmp_path_factory.mktemp("yolo") / "yolo.onnx"
    return _export(Yolo(), path, (1, 3, 96, 96), axes={"images": {0: "batch", 2: "height", 3: "width"}},
                   meta={"names": "{0: 'person', 1: 'bicycle', 2: 'car'}", "imgsz": "[96, 96]", "stride": "4",
                         "task": "detect", "batch": "1"})


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """A 192x192 photo crop (twice the model's 96x96), so boxes in image pixels differ from input pixels."""
    return save(tmp_path_factory.mktemp("img") / "street.png", cv2.resize(data.astronaut(), (192, 192)))


def test_yolo_with_no_flags_explains_a_box_at_the_feature_resolution(yolo, street, tmp_path):
    result = run("explain", yolo, street, "--out", tmp_path)
    [entry] = explained(tmp_path)["explanations"]
    assert entry["target"]["kind"] == "BoxTarget" and raw_shape(entry) == [24, 24]  # 96 / 4, from imgsz
    assert entry["warnings"] == [] and "box row" in result.output
    report = json.loads(run("inspect", yolo, "--json").output)
    assert report["task"]["input_size"] == {"value": [96, 96], "source": "metadata 'imgsz'", "read": True}
    assert report["outputs"][0]["kind"] == "detection rows" and "box:x1,y1,x2,y2[:class]" in \
        report["outputs"][0]["targets"]


def test_yolo_box_target_given_on_the_command_line(yolo, street, tmp_path):
    """The predicted box (input pixels), given back in image pixels (x2: the photo is 192, the input 96),
    picks the same detection row."""
    run("explain", yolo, street, "-m", "occlusion", "-p", "window=16", "-p", "stride=16", "--out", tmp_path / "a")
    [first] = explained(tmp_path / "a")["explanations"]
    x1, y1, x2, y2 = (2 * v for v in first["target"]["box"])
    run("explain", yolo, street, "-m", "occlusion", "-p", "window=16", "-p", "stride=16",
        "-t", f"box:{x1:.2f},{y1:.2f},{x2:.2f},{y2:.2f}:1", "--out", tmp_path / "b")
    [again] = explained(tmp_path / "b")["explanations"]
    assert again["target"]["row"] == first["target"]["row"] and again["target"]["index"] == 1
    np.testing.assert_allclose(again["target"]["box"], first["target"]["box"], atol=0.02)
    refused = run("explain", yolo, street, "-t", "5", "--out", tmp_path / "c", code=2)
    assert refused.stderr.strip() == (
        "error: Output '" + first["target"]["output"] + "' holds detection rows, not class scores, so target '5' "
        "does not fit; use box:x1,y1,x2,y2[:class] (or box:#K for the K-th most confident box).")


def test_input_size_resize_order_and_layout_flags(yolo, street, tmp_path):
    run("explain", yolo, street, "--input-size", "64x64", "--out", tmp_path)
    assert raw_shape(explained(tmp_path)["explanations"][0]) == [16, 16]
    report = json.loads(run("inspect", yolo, "--json", "--input-size", "64x64", "--resize", "stretch",
                            "--order", "bgr", "--layout", "nchw").output)
    task = report["task"]
    assert [task[k]["source"] for k in ("input_size", "resize", "order", "layout")] == ["option"] * 4
    assert report["preprocess"]["resize"] == "stretch" and report["preprocess"]["order"] == "BGR"
    assert report["preprocess"]["size"] == [64, 64] and report["input_layout"] == "NCHW"
    bad = run("inspect", yolo, "--input-size", "64", "--resize", "fit", code=2)
    assert "Invalid value for '--resize'" in bad.output
    bad = run("inspect", yolo, "--input-size", "big", code=2)
    assert bad.stderr.strip() == "error: Input size 'big' is not H x W; give two positive whole numbers like 48x320."


# ---- an SSD-style detector: scores (N, A, C) and boxes (N, A, 4) normalised to [0, 1] -----------------------
class Ssd(nn.Module):
    """8x8 anchors on a 64x64 input: softmax class scores per anchor and x1, y1, x2, y2 boxes in [0, 1]
    (the anchor's centre +- 0.1, moved by at most 0.01)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.scores, self.offsets = nn.Conv2d(8, 3, 1), nn.Conv2d(8, 4, 1)
        grid = (torch.arange(8, dtype=torch.float32) + 0.5) / 8
        cy, cx = torch.meshgrid(grid, grid, indexing="ij")
        self.register_buffer("centres", torch.stack([cx, cy], -1).reshape(1, 64, 2))

    def forward(self, x):
        f = self.features(x)
        scores = self.scores(f).flatten(2).transpose(1, 2).softmax(-1)
        offsets = 0.01 * self.offsets(f).flatten(2).transpose(1, 2).tanh()  # at most 0.64 input px
        return scores, (torch.cat([self.centres - 0.1, self.centres + 0.1], -1) + offsets).clamp(0, 1)


def test_ssd_normalised_boxes_are_scaled_and_a_box_picks_its_anchor(tmp_path):
    path = _export(Ssd(), tmp_path / "ssd.onnx", (1, 3, 64, 64), outputs=["scores", "boxes"],
                   axes={"images": {0: "batch"}})
    image = save(tmp_path / "face.png", cv2.resize(data.astronaut(), (128, 128)))
    # anchor 27 = row 3, column 3: centre (3.5 / 8) * 64 = 28 input px, box 21.6..34.4 = 43.2..68.8 image px
    run("explain", path, image, "--detector", "ssd", "-m", "occlusion", "-t", "box:44,44,68,68:1",
        "--out", tmp_path / "out")
    [entry] = explained(tmp_path / "out")["explanations"]
    assert entry["target"]["output"] == "scores" and entry["target"]["row"] == 27 and entry["target"]["index"] == 1
    np.testing.assert_allclose(entry["target"]["box"], [21.6, 21.6, 34.4, 34.4], atol=0.65)
    report = json.loads(run("inspect", path, "--json", "--detector", "ssd").output)
    assert [(o["name"], o["kind"]) for o in report["outputs"]] == [("scores", "detection scores"),
                                                                   ("boxes", "boxes")]
    assert report["task"]["outputs"][0]["box_layout"]["boxes_output"] == "boxes"


# ---- PP-OCR --------------------------------------------------------------------------------------------------
def test_ppocr_rec_inspect_prints_the_decoded_text_and_char_target_works(tmp_path):
    line = save(tmp_path / "line.png", put_text((64, 400), "HELLO 2024", (10, 48), 1.6, 3))  # ink x 13..283
    text = run("inspect", real_models.ppocr_rec(), line).output
    assert f"text for {line}: 'HELLO 2024'" in text or f"text for {line}: 'HELL0 2024'" in text
    assert "dictionary 6625 entries  [read: metadata 'character']" in text
    run("explain", real_models.ppocr_rec(), line, "-m", "occlusion", "-t", "char:0", "--out", tmp_path / "o")
    [entry] = explained(tmp_path / "o")["explanations"]
    assert entry["target"]["char"] == "H" and heatmap_peak(entry)[1] < 60
    assert explained(tmp_path / "o")["predictions"][0]["text"] in ("HELLO 2024", "HELL0 2024")


def test_ppocr_det_with_no_flags_gives_a_map_on_the_text(tmp_path):
    page = save(tmp_path / "page.png", put_text((320, 480), "TEXT", (250, 230), 2.5, 6))  # ink x 252..430, y 179..229
    result = run("explain", real_models.ppocr_det(), page, "--out", tmp_path / "o")
    [entry] = explained(tmp_path / "o")["explanations"]
    assert entry["method"] == "grad-cam" and entry["target"]["kind"] == "RegionTarget"
    assert entry["warnings"] == [] and "warning:" not in result.stderr
    raw = np.load(entry["files"]["raw"])
    assert raw.max() > 0 and float(raw.max() - raw.min()) > 1e-3 * raw.max()  # no blue uniform overlay
    assert inside(heatmap_peak(entry), (240, 169, 440, 239))
    run("explain", real_models.ppocr_det(), page, "-t", "region:252,179,430,229", "--out", tmp_path / "r")
    [region] = explained(tmp_path / "r")["explanations"]
    assert region["target"]["pixels"] > 0 and region["warnings"] == []
    assert inside(heatmap_peak(region), (240, 169, 440, 239))


# ---- MTCNN ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    x1, y1, x2, y2 = FACE_CROP
    return save(folder / "astronaut.png", data.astronaut()), save(folder / "crop.png", data.astronaut()[y1:y2, x1:x2])


def _face_in_crop():
    return (FACE[0] - FACE_CROP[0], FACE[1] - FACE_CROP[1], FACE[2] - FACE_CROP[0], FACE[3] - FACE_CROP[1])


def test_pnet_with_no_flags_peaks_on_the_face(astronaut, tmp_path):
    run("explain", real_models.mtcnn_onnx("pnet"), astronaut[0], "--out", tmp_path)
    [entry] = explained(tmp_path)["explanations"]
    assert entry["target"]["kind"] == "RegionTarget" and entry["target"]["channel"] == 1  # prob, not reg
    assert entry["warnings"] == [] and inside(heatmap_peak(entry), FACE)


def test_onet_with_no_flags_peaks_on_the_face(astronaut, tmp_path):
    run("explain", real_models.mtcnn_onnx("onet"), astronaut[1], "--out", tmp_path)
    [entry] = explained(tmp_path)["explanations"]
    assert entry["target"]["index"] == 1 and entry["target"]["output"] != "reg"  # face, on prob
    assert entry["warnings"] == [] and inside(heatmap_peak(entry), _face_in_crop())


def test_rnet_all_zero_grad_cam_warns_with_the_flag_that_fixes_it(astronaut, tmp_path):
    """R-Net's 3x3 last map gives Grad-CAM a negative weighted sum everywhere: the map is all zero, and the
    warning (stderr and explain.json) names --method occlusion, which peaks on the face."""
    result = run("explain", real_models.mtcnn_onnx("rnet"), astronaut[1], "--out", tmp_path / "a")
    [entry] = explained(tmp_path / "a")["explanations"]
    assert entry["target"]["index"] == 1 and entry["warnings"][0].startswith("The map is all zero")
    [line] = [w for w in result.stderr.splitlines() if w.startswith("warning:")]
    assert line == f"warning: grad-cam on {entry['image']} [1]: {entry['warnings'][0]}" and "--method occlusion" in line
    run("explain", real_models.mtcnn_onnx("rnet"), astronaut[1], "--method", "occlusion", "--out", tmp_path / "b")
    [fixed] = explained(tmp_path / "b")["explanations"]
    assert fixed["warnings"] == [] and inside(heatmap_peak(fixed), _face_in_crop())


def test_mtcnn_preprocessing_is_said_to_be_guessed_and_preset_facenet_fixes_it(astronaut, tmp_path):
    """facenet-pytorch feeds MTCNN (x - 127.5) / 128; onnxplain guesses imagenet and says so; --preset facenet
    (with --resize stretch, so a 24x24 image reaches the 24x24 input unchanged) gives R-Net's probability of
    the torch net on the same pixels (tolerance 1e-5)."""
    pixels = cv2.resize(cv2.imread(astronaut[1])[..., ::-1], (24, 24), interpolation=cv2.INTER_AREA)
    image = save(tmp_path / "face24.png", pixels)
    model = real_models.mtcnn_onnx("rnet")
    guessed = json.loads(run("inspect", model, image, "--json").output)
    assert guessed["task"]["preset"] == {"value": "imagenet", "source": "guessed", "read": False}
    assert "preset" in guessed["task"]["guessed"]
    fixed = json.loads(run("inspect", model, image, "--json", "--preset", "facenet", "--resize", "stretch").output)
    assert fixed["task"]["preset"]["source"] == "option" and fixed["preprocess"]["mean"] == [127.5] * 3
    x = torch.from_numpy((pixels.astype(np.float32) - 127.5) / 128).permute(2, 0, 1)[None]
    with torch.no_grad():
        want = real_models.mtcnn_net("rnet")(x)[1][0, 1].item()  # facenet's RNet returns (reg, prob)
    face = {e["index"]: e["probability"] for e in fixed["predictions"][0]["top"]}[1]
    assert face == pytest.approx(want, abs=1e-5)
    imagenet = {e["index"]: e["probability"] for e in guessed["predictions"][0]["top"]}[1]
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731 - the guess moves the face log-odds (5.87 vs 5.70)
    assert abs(logit(imagenet) - logit(want)) > 0.05
    text = run("inspect", model, image, "--preset", "facenet").output
    assert "preset     facenet  [read: option]" in text


# ---- inspect on every kind: never a traceback; the auto layer the explainer uses ----------------------------
@pytest.fixture(scope="module")
def static_batch(tmp_path_factory):
    path = tmp_path_factory.mktemp("static") / "static.onnx"
    torch.onnx.export(FlattenNet().eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=True)
    return path


MODELS = {"ppocr-rec": real_models.ppocr_rec, "ppocr-det": real_models.ppocr_det,
          "ppocr-cls": real_models.ppocr_cls, "pnet": lambda: real_models.mtcnn_onnx("pnet"),
          "rnet": lambda: real_models.mtcnn_onnx("rnet"), "onet": lambda: real_models.mtcnn_onnx("onet")}
KINDS = {"ppocr-rec": "sequence", "ppocr-det": "dense map", "ppocr-cls": "probabilities", "pnet": "dense map",
         "rnet": "probabilities", "onet": "probabilities", "yolo": "detection rows", "static": "class logits"}


@pytest.mark.parametrize("name", list(KINDS))
def test_inspect_names_each_outputs_kind_targets_and_methods(name, request):
    model = request.getfixturevalue({"yolo": "yolo", "static": "static_batch"}[name]) if name in ("yolo", "static") \
        else MODELS[name]()
    report = json.loads(run("inspect", model, "--json").output)
    chosen = next(o for o in report["outputs"] if o["name"] == report["explained_output"])
    assert chosen["kind"] == KINDS[name] and chosen["targets"] and "occlusion" in chosen["methods"]
    assert all(o["kind"] != "unknown" and o["why"] for o in report["outputs"])
    assert report["task"]["problems"] == [] and report["auto_layer"]["name"]
    if name == "ppocr-rec":  # the noise image reads as no text, so the probe has no target; inspect says so
        assert not report["auto_layer"]["probed"] and "(not probed: Output " in report["auto_layer"]["why"]
        assert "decodes to no text" in report["auto_layer"]["why"]
    else:
        assert report["auto_layer"]["probed"]
    assert set(report["task"]["read"]) | set(report["task"]["guessed"]) >= {"input_size", "preset", "layout"}
    text = run("inspect", model).output
    assert f"({chosen['kind']}" in text and "targets: " in text and "methods: " in text


def test_inspect_auto_layer_is_the_one_explain_uses(tmp_path):
    """On a ViT-like model whose final LayerNorm is read only at the class token, inspect shows the probed
    auto layer (not the graph's last spatial tensor) with the reason, and explain uses the same."""
    path = _export(TinyViT(), tmp_path / "vit.onnx", (1, 3, 32, 32), axes={"images": {0: "batch"}})
    image = save(tmp_path / "x.png", np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    report = json.loads(run("inspect", path, image, "--json").output)
    from onnxplain import Explainer
    from onnxplain.autolayer import candidates
    model = Explainer(path, quiet=True).model
    assert report["auto_layer"]["name"] != candidates(model, model.outputs[0].name)[0].name   # the last one
    assert report["auto_layer"]["name"] == model.auto_layer()[0]   # the graph's choice skips it too
    assert "read only at the class token" in report["auto_layer"]["why"]
    run("explain", path, image, "-m", "recipro-cam", "--out", tmp_path / "o")
    [entry] = explained(tmp_path / "o")["explanations"]
    assert entry["layer"] == report["auto_layer"]["name"] and entry["warnings"] == []


def test_inspect_output_flag_picks_the_predictions_output(astronaut):
    model = real_models.mtcnn_onnx("onet")
    default = json.loads(run("inspect", model, "--json").output)
    other = next(o["name"] for o in default["outputs"] if o["name"] != default["explained_output"])
    report = json.loads(run("inspect", model, astronaut[1], "--json", "--output", other).output)
    assert report["explained_output"] == other and report["predictions"][0]["output"] == other
    bad = run("inspect", real_models.mtcnn_onnx("onet"), "--output", "nope", code=2)
    assert bad.stderr.startswith("error: The model has no output named 'nope' (outputs: ")
