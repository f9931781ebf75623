"""One conformance test over every registered method: new methods get it for free.

For each method on RegionNet (3x32x32, 3 classes): maps of the documented shape, finite values, batch
independence (a batch equals its images one by one, rtol 1e-4 of the map's range), the model left
unchanged, determinism with a seed, and the NHWC twin of the model gives the same map (rtol 1e-3).
"""
from __future__ import annotations

import numpy as np
import pytest

import helpers
import onnxplain
from onnxplain.methods import list_methods

# keep the slow defaults small here; every other parameter keeps its default
LIGHT = {"rise": {"n": 200}, "smoothgrad": {"n": 6}, "smoothgrad-fd": {"n": 64}, "integrated-gradients": {"steps": 8},
         "smooth-grad-cam++": {"n": 4}}
METHODS = [m["name"] for m in list_methods()]


@pytest.fixture(scope="module")
def explainers(region_model, nhwc_model):
    return (onnxplain.load(region_model, preprocess="raw01", quiet=True),
            onnxplain.load(nhwc_model, preprocess="raw01", quiet=True))


def assert_close_maps(a, b, rtol):
    scale = max(float(np.abs(b).max()), 1e-8)
    assert float(np.abs(a - b).max()) <= rtol * scale


@pytest.mark.parametrize("method", METHODS)
def test_method_conformance(method, explainers):
    explainer, nhwc = explainers
    images = helpers.random_images(3, seed=7)
    before = explainer.model.proto.SerializeToString()
    params = LIGHT.get(method, {})
    if "seed" in {k for m in list_methods() if m["name"] == method for k in m["params"]}:
        params = {**params, "seed": 1}
    together = explainer.explain(images, method=method, target=1, **params)
    assert len(together) == 3
    for attribution in together:
        assert attribution.upsampled.shape == (32, 32) and attribution.heatmap.shape == (32, 32)
        assert attribution.raw.ndim == 2 and attribution.raw.dtype == np.float32
        assert np.isfinite(attribution.raw).all() and np.isfinite(attribution.heatmap).all()
        assert attribution.method == method and attribution.target["index"] == 1
    for i, image in enumerate(images):
        [alone] = explainer.explain([image], method=method, target=1, **params)
        assert_close_maps(alone.raw, together[i].raw, 1e-4)
    again = explainer.explain(images[:1], method=method, target=1, **params)
    assert np.array_equal(again[0].raw, explainer.explain(images[:1], method=method, target=1, **params)[0].raw)
    assert explainer.model.proto.SerializeToString() == before
    [twin] = nhwc.explain(images[:1], method=method, target=1, **params)
    assert_close_maps(twin.raw, together[0].raw, 1e-3)
