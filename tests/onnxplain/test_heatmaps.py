"""Per-target work of explain: heatmaps made on first read, four targets per warp; map checks in one pass.

Known answers: on EfficientNet-Lite0 and odd-size, non-square photos under crop and letterbox geometry, every
target's upsampled and original-size heatmap equals the per-target computation the Explainer used before
(cv2.resize, PixelMap.to_original, 0 outside what the model saw); nothing is made before it is read, and each
map is made once.
"""
from __future__ import annotations

import dataclasses
import pickle

import cv2
import numpy as np
import pytest
from skimage import data

import onnxplain
from onnxplain import heatmaps
from onnxplain.images import PixelMap, _geometry, preset
from onnxplain.lazy import Deferred
from onnxplain.mapcheck import map_warnings, map_warnings_many
from onnxplain.methods.base import Attribution

LAYER = "/_swish_1/Clip_output_0"
RECIPRO = {"layer": LAYER, "mask": "binary", "softmax": False}


def photos() -> list[np.ndarray]:
    """Odd sizes, landscape and portrait."""
    cat = data.chelsea()
    return [cat[:297, :445], np.ascontiguousarray(cat[3:336, 101:312])]


def per_target(attribution: Attribution, pixel_map: PixelMap, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The upsampled and original-size heatmaps as the Explainer made them for each target before."""
    h, w = hw
    raw = attribution.raw
    upsampled = cv2.resize(raw, (w, h), interpolation=cv2.INTER_LINEAR) if raw.shape != (h, w) else raw
    heatmap = np.where(pixel_map.valid_original(), pixel_map.to_original(upsampled), 0).astype(np.float32)
    return upsampled, heatmap


@pytest.fixture(scope="module", params=["crop", "letterbox"])
def explainer(request, effnet):
    return onnxplain.Explainer(effnet, device="cpu", quiet=True, resize=request.param)


@pytest.mark.parametrize("method, target, params", [("recipro-cam", ["top6", "top5"], RECIPRO),
                                                    ("cam", "top3", {"layer": LAYER})])
def test_heatmaps_equal_the_per_target_computation(explainer, method, target, params):
    """Tolerance 1e-6 absolute (measured: bit-equal): 6 targets make a 4-map and a padded 2-map warp, 5 a 4-map
    and a 1-map one; `cam` (one target per run) goes through the same heatmaps."""
    batch = explainer.prepare(photos())
    attributions = explainer.explain(photos(), method, target=target, **params)
    images = [a.image_name for a in attributions]
    assert images.count("image0") == (6 if method == "recipro-cam" else 3)
    for attribution in attributions:
        i = int(attribution.image_name[-1])
        upsampled, heatmap = per_target(attribution, batch.pixel_maps[i], batch.hw)
        assert attribution.heatmap.shape == photos()[i].shape[:2] and attribution.heatmap.dtype == np.float32
        np.testing.assert_allclose(attribution.upsampled, upsampled, rtol=0, atol=1e-6)
        np.testing.assert_allclose(attribution.heatmap, heatmap, rtol=0, atol=1e-6)
        assert np.ptp(attribution.heatmap) > 0 and attribution.heatmap.flags.c_contiguous
        np.testing.assert_array_equal(attribution.valid, batch.pixel_maps[i].valid_original())


def test_heatmaps_are_made_on_first_read_once(effnet, monkeypatch):
    """Nothing is resized or warped by explain; reading target 0's heatmap warps targets 0-3 in one call, the
    fifth its own; a second read returns the same array."""
    ex = onnxplain.Explainer(effnet, device="cpu", quiet=True)
    calls: list[int] = []
    warp = heatmaps.warp_stack
    monkeypatch.setattr(heatmaps, "warp_stack", lambda maps, pm: calls.append(len(maps)) or warp(maps, pm))
    resizes: list[tuple] = []
    resize = cv2.resize
    monkeypatch.setattr(heatmaps.cv2, "resize", lambda *a, **k: resizes.append(a[0].shape) or resize(*a, **k))
    attributions = ex.explain(photos()[:1], "recipro-cam", target="top5", **RECIPRO)
    lazy = [Attribution.__dict__[name] for name in ("upsampled", "heatmap")]
    assert not any(d.computed(a) for d in lazy for a in attributions)
    assert calls == [] and resizes == []
    first = attributions[0].heatmap
    assert calls == [4] and len(resizes) == 4
    assert attributions[0].heatmap is first
    for a in attributions[1:4]:
        a.heatmap
    assert calls == [4]
    attributions[4].heatmap
    assert calls == [4, 1] and len(resizes) == 5
    assert all(a.upsampled is a.upsampled for a in attributions) and len(resizes) == 5


def test_warp_stack_equals_one_warp_per_map():
    """1 to 9 maps (chunks of 4, a padded 2 or 3, a lone 1) on crop, letterbox and stretch geometry, a map not
    at the model-input size resized first: bit-equal to PixelMap.to_original."""
    rng = np.random.default_rng(0)
    for resize, original in (("crop", (301, 451)), ("letterbox", (333, 211)), ("stretch", (97, 1003))):
        pixel_map = PixelMap(_geometry(original, (224, 224), preset("imagenet", resize=resize)), original,
                             (224, 224))
        for n in range(1, 10):
            maps = [rng.standard_normal((224, 224)).astype(np.float32) * 10 for _ in range(n)]
            maps[-1] = rng.standard_normal((7, 7)).astype(np.float64)
            for got, m in zip(heatmaps.warp_stack(maps, pixel_map), maps, strict=True):
                np.testing.assert_array_equal(got, pixel_map.to_original(m))


def test_attribution_takes_arrays_or_deferred_and_stays_frozen(effnet_explainer):
    """Arrays given whole are kept as given; lazy ones survive pickling with equal values; assignment fails."""
    [made] = effnet_explainer.explain(photos()[:1], "recipro-cam", **RECIPRO)
    copy = pickle.loads(pickle.dumps(made))
    np.testing.assert_array_equal(copy.heatmap, made.heatmap)
    np.testing.assert_array_equal(copy.upsampled, made.upsampled)
    given = np.ones((3, 3), np.float32)
    plain = dataclasses.replace(made, heatmap=given, upsampled=Deferred(np.zeros, (2, 2)))
    assert plain.heatmap is given and plain.upsampled.shape == (2, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.heatmap = given
    with pytest.raises(TypeError, match="heatmap"):
        Attribution(method="m", params={}, target={}, layer=None, raw=given, upsampled=given, scores=given,
                    image=given)


def test_map_checks_of_a_stack_equal_each_maps_own():
    """Zero, constant (above and below the 1e-7 relative spread), NaN, inf and usable maps in one stack give
    each map's own sentences, exactly."""
    stack = np.stack([np.zeros((7, 7)), np.full((7, 7), 0.5), np.full((7, 7), 3e4), np.eye(7),
                      np.where(np.eye(7) > 0, np.nan, 1.0), np.where(np.eye(7) > 0, np.inf, 0.0)]).astype(np.float32)
    stack[2, 0, 0] += 1.5e-3  # one float32 step at 3e4 (2e-3): under 1e-7 of the scale, still constant
    stack[1, 0, 0] += 1e-3  # spread 1e-3: usable
    expected = [map_warnings(m) for m in stack]
    assert [len(w) for w in expected] == [1, 0, 1, 0, 1, 1]
    assert map_warnings_many(stack) == expected
    assert map_warnings_many(stack[:0]) == [] and map_warnings_many(np.zeros((2, 0))) == [map_warnings(np.zeros(0))] * 2
