"""Every method on real models and photos: a pointing game on EfficientNet-Lite0, and the Paddle model
whose weights live in Constant nodes run through every registered method."""
from __future__ import annotations

import numpy as np
import pytest

import helpers
import onnxplain
import real_models
from onnxplain.errors import MethodError
from onnxplain.images import preset

# Boxes (x1, y1, x2, y2) of the predicted object in model-input pixels (224x224 centre crop), measured by hand
# on the prepared inputs drawn with a 16-pixel grid.
PHOTOS = {
    "astronaut": (560, (136, 148, 224, 224)),   # 'football helmet': the white helmet, bottom right
    "coffee": (967, (28, 0, 184, 120)),         # 'espresso': the cup and its coffee
    "flower": (985, (18, 28, 192, 196)),        # 'daisy': the flower head
}
METHODS = {"grad-cam": {}, "grad-cam++": {}, "layer-cam": {}, "cam": {}, "ablation-cam": {}, "recipro-cam": {},
           "score-cam": {"channels": 64}, "occlusion": {"window": (32, 32), "stride": 16}, "rise": {"n": 500}}


def photo(name: str) -> np.ndarray:
    if name == "flower":
        from sklearn.datasets import load_sample_images
        return load_sample_images().images[1]
    from skimage import data
    return getattr(data, name)()


@pytest.fixture(scope="module")
def explainer(effnet):
    return onnxplain.load(effnet, quiet=True)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_pointing_game_on_real_photos(name, explainer):
    label, (x1, y1, x2, y2) = PHOTOS[name]
    batch = explainer.prepare([photo(name)])
    assert explainer.predict(batch)[0].top[0][0] == label
    for method, params in METHODS.items():
        [a] = explainer.explain(batch, method=method, **params)
        r, c = helpers.peak(a.upsampled)
        assert y1 <= r < y2 and x1 <= c < x2, (name, method, (r, c))


def test_constant_weight_paddle_model_through_every_method():
    """PP-OCR cls (Paddle, opset 11, no initializers): every method gives a finite, non-empty map at the input's
    size; CAM alone refuses, naming the MaxPool -> GlobalAveragePool head it found."""
    from skimage import data
    explainer = onnxplain.load(real_models.ppocr_cls(), quiet=True, input_size=(48, 192),
                               preprocess=preset("minus1to1", resize="stretch"))
    line = data.page()[40:100, 0:384]
    light = {"rise": {"n": 200}, "smoothgrad": {"n": 6}, "smoothgrad-fd": {"n": 64},
             "integrated-gradients": {"steps": 8}, "smooth-grad-cam++": {"n": 4}, "occlusion": {"window": (12, 24), "stride": (6, 12)}}
    for method in [m["name"] for m in onnxplain.list_methods()]:
        if method == "cam":
            with pytest.raises(MethodError, match="found MaxPool -> GlobalAveragePool"):
                explainer.explain([line], method=method)
            continue
        [a] = explainer.explain([line], method=method, **light.get(method, {}))
        assert a.heatmap.shape == line.shape[:2] and np.isfinite(a.heatmap).all(), method
        assert float(np.abs(a.heatmap).max()) > 0, method
