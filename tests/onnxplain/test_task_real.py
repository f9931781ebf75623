"""Real deployed models with no options (issue 17): PP-OCRv4 rec and det from the rapidocr-onnxruntime wheel,
MTCNN P/R/O-Net. Text images are drawn with OpenCV, so their boxes are known exactly."""
from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import real_models
from onnxplain import Explainer
from onnxplain.errors import TargetError
from onnxplain.taskreport import inspect_task


def _text(size, text, org, scale, thickness):
    image = np.full(size + (3,), 255, np.uint8)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    return image


@pytest.fixture(scope="module")
def rec():
    return Explainer(real_models.ppocr_rec(), quiet=True)


def test_ppocr_rec_reads_its_dictionary_and_decodes(rec):
    assert rec.task.dictionary.source == "metadata 'character'" and len(rec.task.dictionary.value) == 6625
    assert rec.task.input_size.value == (48, 320) and rec.task.outputs[0].kind == "sequence"
    line = _text((64, 400), "HELLO 2024", (10, 48), 1.6, 3)  # ink spans columns 13..283
    [p] = rec.predict(line)
    assert p.text in ("HELLO 2024", "HELL0 2024")  # the font's O and 0 are the same glyph
    first = rec.explain(line, method="occlusion", target="char:0")[0]
    last = rec.explain(line, method="occlusion", target="char:9")[0]
    assert first.target["char"] == "H" and np.unravel_index(first.heatmap.argmax(), first.heatmap.shape)[1] < 60
    assert last.target["char"] == "4" and np.unravel_index(last.heatmap.argmax(), last.heatmap.shape)[1] > 230
    with pytest.raises(TargetError, match=r"^Target char:10 is out of range: image 0 decodes to '.+' \(10 "):
        rec.explain(line, method="occlusion", target="char:10")
    report = inspect_task(rec.model)
    assert report["problems"] == [] and report["outputs"][0]["targets"][1] == "char:K"


def test_ppocr_det_predicted_region_lands_on_the_text():
    e = Explainer(real_models.ppocr_det(), quiet=True)
    assert e.task.outputs[0].kind == "dense map" and e.task.outputs[0].normalised
    page = _text((320, 480), "TEXT", (250, 230), 2.5, 6)  # ink box x 252..430, y 179..229
    [a] = e.explain(page, method="occlusion")
    y, x = np.unravel_index(a.heatmap.argmax(), a.heatmap.shape)
    assert a.target["kind"] == "RegionTarget" and 240 <= x <= 440 and 169 <= y <= 239


def test_ppocr_det_is_a_paddle_export_read_in_bgr_and_an_explicit_order_wins():
    """The det file's producer name is blank; paddle2onnx's graph name marks it, so the order is BGR (PaddleOCR
    reads with OpenCV) with the reason, and the -1..1 preset RapidOCR's det config uses; --order rgb wins."""
    e = Explainer(real_models.ppocr_det(), quiet=True)
    assert e.model.proto.producer_name == "" and e.task.exporter == "paddle"
    assert e.task.exporter_source == "graph name 'Model from PaddlePaddle.'"
    assert e.preprocess.order == "BGR" and e.task.order.source == (
        "guessed (a Paddle export by its graph name 'Model from PaddlePaddle.': PaddleOCR reads images with "
        "OpenCV, BGR, and applies mean/std in that order)")
    assert (e.preprocess.mean, e.preprocess.std) == ((0.5,) * 3, (0.5,) * 3)
    assert e.task.input_size.value is None and "PP-OCR det takes any size" in e.task.input_size.source
    image = np.zeros((224, 224, 3), np.uint8)  # the input size, so no letterbox border
    image[..., 0] = 255  # pure red arrives last (channel 2) in BGR
    x = e.prepare(image).x[0]
    assert x[2].min() == pytest.approx(1.0) and x[0].max() == pytest.approx(-1.0)
    report = inspect_task(e.model, e.task)
    assert report["order"] == {"value": "BGR", "source": e.task.order.source, "read": False}
    rgb = Explainer(real_models.ppocr_det(), quiet=True, order="rgb")
    assert rgb.preprocess.order == "RGB" and rgb.task.order.source == "option"


@pytest.mark.parametrize("name", ["pnet", "rnet", "onet"])
def test_mtcnn_explains_prob_not_reg(name):
    e = Explainer(real_models.mtcnn_onnx(name), quiet=True)
    chosen = e.task.output(e.output_name(None))
    assert chosen.kind in ("probabilities", "dense map") and chosen.normalised and chosen.shape[1] == 2
    assert all(o.kind == "regression" for o in e.task.outputs if o.name != chosen.name)
    image = np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)
    x = e.prepare(image).x
    value = ort.InferenceSession(str(real_models.mtcnn_onnx(name))).run([chosen.name], {"input": x})[0]
    [p] = e.predict(image)
    if chosen.kind == "probabilities":  # shown as the model gives it: no second softmax
        assert p.top[0][3] == pytest.approx(float(value[0].max()), abs=1e-6)
