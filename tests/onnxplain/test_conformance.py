"""One conformance test over every registered method: new methods get it for free.

For each method on RegionNet (3x32x32, 3 classes): maps of the documented shape, finite values, batch
independence (a batch equals its images one by one, rtol 1e-4 of the map's range), the model left
unchanged, determinism with a seed, and the NHWC twin of the model gives the same map (rtol 1e-3).
Each method also runs on a context that offers only what MethodContext lists, with the same map (exact).
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import helpers
import onnxplain
from onnxplain.explainer import Explainer
from onnxplain.methods import get, list_methods
from onnxplain.methods.base import MethodContext
from onnxplain.targets import ClassTarget

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


CONTEXT = {name for name in vars(MethodContext) if not name.startswith("_")} | set(MethodContext.__annotations__)


class OnlyTheContext:
    """The explainer seen through MethodContext: any other attribute is an AttributeError naming it."""

    def __init__(self, explainer):
        self._explainer = explainer

    def __getattr__(self, name):
        if name not in CONTEXT:
            raise AttributeError(f"methods may not use Explainer.{name}: it is not in MethodContext")
        return getattr(self._explainer, name)


def test_the_explainer_is_a_method_context(explainers):
    """Every member of MethodContext exists on an Explainer (looked up without running properties)."""
    assert {"model", "runtime", "quiet", "forward", "run", "tail", "label", "module", "torch_device"} <= CONTEXT
    missing = object()
    assert [n for n in sorted(CONTEXT) if inspect.getattr_static(explainers[0], n, missing) is missing] == []
    with pytest.raises(AttributeError, match="Explainer.predict: it is not in MethodContext"):
        OnlyTheContext(explainers[0]).predict


@pytest.mark.parametrize("method", METHODS)
def test_method_uses_only_the_context(method, explainers):
    explainer = explainers[0]
    images = helpers.random_images(2, seed=7)
    params = LIGHT.get(method, {})
    cls = get(method)
    batch = explainer.prepare(images)
    layer = explainer.model.resolve_layer("auto", explainer.output_name(None)) if cls.uses_layer else None
    target = ClassTarget(output=explainer.output_name(None), index=1)
    raw = cls(cls.make_params(**params)).explain(OnlyTheContext(explainer), batch, [target, target], layer)
    want = explainer.explain(images, method=method, target=1, **params)
    for got, attribution in zip(raw.maps, want):
        np.testing.assert_array_equal(got, attribution.raw)
