"""Models whose input is not float32: float16 models (common where models are deployed on GPUs) and uint8 image
inputs run every forward-only method on onnxruntime, and gradient methods on the converter's float32 upcast."""
from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import helpers
from onnxplain import Explainer
from onnxplain.cli import main
from onnxplain.runtime import as_input

FORWARD_ONLY = {"occlusion": {"window": (4, 4)}, "rise": {"n": 200}, "smoothgrad-fd": {"n": 256}, "score-cam": {},
                "ablation-cam": {}, "recipro-cam": {}, "eigen-cam": {}, "cam": {}}


class Uint8Input(nn.Module):
    """RegionNet behind a uint8 image input (x / 255 inside the graph), as some TF exports take images."""

    def __init__(self):
        super().__init__()
        self.inner = helpers.RegionNet()

    def forward(self, x):
        return self.inner(x.float() / 255)


def export(model: nn.Module, path, dtype: torch.dtype):
    torch.onnx.export(model.eval(), torch.zeros(1, 3, 32, 32, dtype=dtype), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["scores"],
                      dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}})
    return path


@pytest.fixture(scope="module")
def explainers(tmp_path_factory, region_model):
    folder = tmp_path_factory.mktemp("dtypes")
    half = export(helpers.RegionNet().half(), folder / "half.onnx", torch.float16)
    uint8 = export(Uint8Input(), folder / "uint8.onnx", torch.uint8)
    return {"float32": Explainer(region_model, preprocess="raw01", device="cpu", quiet=True),
            "float16": Explainer(half, preprocess="raw01", device="cpu", quiet=True),
            "uint8": Explainer(uint8, preprocess="raw255", device="cpu", quiet=True)}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("method", list(FORWARD_ONLY))
def test_float16_model_runs_forward_only_methods_like_its_float32_original(explainers, method):
    """Same predictions; maps (float32 arrays) correlate with the float32 model's at r > 0.95: float16 rounding
    (about 1e-3 relative) moves them, most for recipro-cam's softmax over close logits (0.97) and for
    smoothgrad-fd, whose score differences it blurs (r > 0.9: 0.98, 0.996, 0.905 on the three images)."""
    images = list(helpers.region_class_images())
    half, full = explainers["float16"], explainers["float32"]
    assert [p.top[0][0] for p in half.predict(images)] == [p.top[0][0] for p in full.predict(images)]
    ours = half.explain(images, method=method, target=[0, 1, 2], **FORWARD_ONLY[method])
    reference = full.explain(images, method=method, target=[0, 1, 2], **FORWARD_ONLY[method])
    for a, b in zip(ours, reference):
        least = 0.9 if method == "smoothgrad-fd" else 0.95
        assert a.raw.dtype == np.float32 and correlation(a.raw, b.raw) > least, (method, correlation(a.raw, b.raw))


@pytest.mark.parametrize("method", ["grad-cam", "saliency", "integrated-gradients"])
def test_float16_model_runs_gradient_methods_on_its_float32_upcast(explainers, method):
    """The converter takes the float16 model upcast to float32 (its half weights are exact in float32): gradient
    maps correlate with the float32 original's at r > 0.99 (only the weights' half rounding differs)."""
    images = list(helpers.region_class_images())
    ours = explainers["float16"].explain(images, method=method, target=[0, 1, 2])
    reference = explainers["float32"].explain(images, method=method, target=[0, 1, 2])
    for a, b in zip(ours, reference):
        assert correlation(a.raw, b.raw) > 0.99, (method, correlation(a.raw, b.raw))


def test_float16_model_on_engine_torch_and_in_inspect(explainers):
    """Engine torch feeds the upcast module float32 and matches onnxruntime's float16 maps (r > 0.99);
    `onnxplain inspect` says the model converts as float32."""
    half = explainers["float16"]
    images = list(helpers.region_class_images())
    torch_engine = Explainer(half.model, preprocess="raw01", device="cpu", quiet=True, engine="torch")
    for method in ("score-cam", "ablation-cam"):
        for a, b in zip(torch_engine.explain(images, method=method, target=[0, 1, 2]),
                        half.explain(images, method=method, target=[0, 1, 2])):
            assert correlation(a.raw, b.raw) > 0.99, (method, correlation(a.raw, b.raw))
    report = CliRunner().invoke(main, ["inspect", str(half.model.path)])
    assert report.exit_code == 0
    assert "converter  converts to torch as float32 (the model holds float16)" in report.output


@pytest.mark.parametrize("method", ["score-cam", "ablation-cam", "grad-cam"])
def test_uint8_input_model_equals_the_float_model(explainers, method):
    """Integer pixels fed as uint8: scores equal the float model's (1e-6), maps too (relative 1e-5)."""
    images = list(helpers.region_class_images())
    u8, full = explainers["uint8"], explainers["float32"]
    np.testing.assert_allclose(u8.run(u8.prepare(images).x)["scores"], full.run(full.prepare(images).x)["scores"],
                               atol=1e-6)
    for a, b in zip(u8.explain(images, method=method, target=[0, 1, 2]),
                    full.explain(images, method=method, target=[0, 1, 2])):
        assert np.abs(a.raw - b.raw).max() <= 1e-5 * np.abs(b.raw).max()


def test_as_input_casts_rounds_and_clips():
    x = np.array([-3.0, 0.4, 0.6, 254.4, 300.0], np.float32)
    assert as_input(x, np.dtype(np.uint8)).tolist() == [0, 0, 1, 254, 255]
    assert as_input(x, np.dtype(np.float16)).dtype == np.float16
    assert as_input(x, None) is not None and as_input(x, None).dtype == np.float32
    assert as_input(x[::2], np.dtype(np.float32)).flags["C_CONTIGUOUS"]


def test_an_input_numpy_cannot_hold_is_one_sentence_and_nothing_written(tmp_path):
    """A bfloat16 image input: `onnxplain explain` exits 2 with one sentence naming the input, writes nothing."""
    h = onnx.helper
    graph = h.make_graph([h.make_node("Cast", ["x"], ["c"], to=onnx.TensorProto.FLOAT),
                          h.make_node("GlobalAveragePool", ["c"], ["p"]), h.make_node("Flatten", ["p"], ["y"])],
                         "g", [h.make_tensor_value_info("x", onnx.TensorProto.BFLOAT16, ["N", 3, 8, 8])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])])
    path = tmp_path / "bf16.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=8), str(path))
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    result = CliRunner().invoke(main, ["explain", str(path), str(image), "-m", "occlusion", "--out",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == ("error: The model's input 'x' is bfloat16, which onnxplain cannot feed; "
                                     "re-export the model with a float32, float16 or uint8 input.")
    assert not (tmp_path / "out").exists()
