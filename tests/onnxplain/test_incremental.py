"""Incremental occlusion and targets in one pass.

Known answers: incremental occlusion equals plain occlusion (onnxruntime on every occluded image) on the zoo
and on EfficientNet-Lite0; auto falls back to plain where the cost model sees no gain and says why; the
approximate mode stays near the exact map; top-k targets of multi-target methods equal their single-target
runs from the forwards of one target (rows fed to the runtimes counted).
"""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from onnxplain import Explainer
from onnxplain.errors import MethodError
from onnxplain.runtime import Runtime
from zoo import zoo_exports  # noqa: F401  (session fixture)

OCCLUDE = {"window": 12, "stride": 4, "score": "logit"}


def image(seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_incremental_equals_plain_on_the_zoo(zoo_exports, name):
    """Tolerance 1e-4 of the map's maximum plus 1e-6 of the largest logit: the torch prefix and onnxruntime
    round differently, and some of these random miniatures barely react to a window (their maps are a few
    float32 roundings of the logits high)."""
    ex = Explainer(zoo_exports.path(name, "legacy17"), preprocess="raw01", device="cpu", quiet=True)
    [plain] = ex.explain([image()], "occlusion", incremental="false", **OCCLUDE)
    [auto] = ex.explain([image()], "occlusion", incremental="auto", **OCCLUDE)
    info = auto.extras["incremental"]
    assert info["reason"]
    if info["cut"] is None:
        with pytest.raises(MethodError, match="Incremental occlusion cannot run on this model"):
            ex.explain([image()], "occlusion", incremental="true", **OCCLUDE)
        return
    [forced] = ex.explain([image()], "occlusion", incremental="true", **OCCLUDE)
    assert forced.extras["incremental"]["used"]
    tolerance = 1e-4 * np.abs(plain.raw).max() + 1e-6 * np.abs(plain.scores).max()
    assert np.abs(forced.raw - plain.raw).max() < tolerance
    assert np.abs(auto.raw - plain.raw).max() < tolerance


def test_auto_uses_incremental_on_resnet_and_plain_on_vit(zoo_exports):
    resnet = Explainer(zoo_exports.path("resnet", "dynamo"), preprocess="raw01", device="cpu", quiet=True)
    [a] = resnet.explain([image()], "occlusion", **OCCLUDE)
    assert a.extras["incremental"]["used"] and a.extras["incremental"]["predicted_speedup"] > 1.25
    vit = Explainer(zoo_exports.path("vit", "legacy17"), preprocess="raw01", device="cpu", quiet=True)
    [b] = vit.explain([image()], "occlusion", **OCCLUDE)
    assert not b.extras["incremental"]["used"]
    assert "not spatially local" in b.extras["incremental"]["reason"]


def test_incremental_equals_plain_on_efficientnet_lite0(effnet):
    """Trained model, real photo, 49 windows of 32x32 (Pad, depthwise Conv, Clip in the prefix); 1e-4 of max."""
    from skimage import data
    ex = Explainer(effnet, device="cpu", quiet=True)
    params = {"window": 32, "stride": 32, "score": "logit"}
    [plain] = ex.explain([data.chelsea()], "occlusion", incremental="false", **params)
    [fast] = ex.explain([data.chelsea()], "occlusion", incremental="true", **params)
    assert fast.extras["incremental"]["used"] and fast.extras["incremental"]["steps"] > 5
    assert rel_err(fast.raw, plain.raw) < 1e-4


@pytest.mark.parametrize("threads, side_by_side", [(1, False), (2, True)])
def test_both_schedules_equal_plain(zoo_exports, monkeypatch, threads, side_by_side):
    """One core: the next chunk's prefix beside the tail; two: whole chunks side by side on one-thread tail
    sessions (Runtime.with_threads). Chunks of 8 windows: 36 windows make 5, the last one short."""
    calls = []
    original = Runtime.with_threads
    monkeypatch.setattr(Runtime, "with_threads", lambda self, n: calls.append(n) or original(self, n))
    ex = Explainer(zoo_exports.path("resnet", "legacy17"), preprocess="raw01", device="cpu", quiet=True,
                   threads=threads, batch_size=8)
    [plain] = ex.explain([image()], "occlusion", incremental="false", **OCCLUDE)
    [fast] = ex.explain([image()], "occlusion", incremental="true", **OCCLUDE)
    assert fast.extras["forwards"] == 36 and bool(calls) == side_by_side
    assert all(n == 1 for n in calls)
    assert rel_err(fast.raw, plain.raw) < 1e-4


def test_lanes_share_the_cores_up_to_four(region_model):
    """16 cores: 4 lanes whose tails get 4 threads each; 3 cores: 3 lanes of 1; 1 core: no lanes."""
    from onnxplain.methods.incremental import _lanes
    from onnxplain.model import Model
    proto = Model.load(region_model).proto
    for cores, expected in ((16, (4, 4)), (3, (3, 1)), (1, None)):
        lanes = _lanes(Runtime(proto, threads=cores))
        assert (lanes if lanes is None else (lanes[1], lanes[0].threads)) == expected


def test_chunks_come_in_multiples_of_the_lanes(region_model):
    """729 windows in batches of 32: 23 chunks on one core; 24 of 30 or 31 on two, so no lane idles at the end."""
    from types import SimpleNamespace
    from onnxplain.methods.incremental import incremental_chunks
    from onnxplain.model import Model
    proto = Model.load(region_model).proto
    for cores, count in ((1, 23), (2, 24)):
        context = SimpleNamespace(tail=lambda cut, n=cores: (None, Runtime(proto, threads=n)))
        chunks = incremental_chunks(context, SimpleNamespace(cut="x"), 729, 32)
        assert len(chunks) == count and max(map(len, chunks)) <= 32
        assert np.array_equal(np.concatenate(chunks), np.arange(729))


def test_crops_are_the_cached_map_with_each_patch_pasted_in():
    """One index_select over the cached map's rows and the chunk's patches equals slicing each window's crop
    and pasting its patch, clipped where the patch runs past the crop, from either lane's scratch slot; a chunk
    larger than a slot is refused."""
    import torch
    from onnxplain.methods.incremental import _Source
    padded = torch.randn(1, 5, 12, 10)
    source = _Source(padded, slots=2, room=6 * 3 * 4)
    for slot, count in ((1, 3), (0, 6), (1, 6)):
        rng = np.random.default_rng(count)
        ty, tx = rng.integers(0, 7, count), rng.integers(0, 6, count)
        dy, dx = rng.integers(-2, 5, count), rng.integers(-2, 4, count)
        patch = torch.randn(count, 5, 3, 4)
        crops = source.crops(patch, ty, tx, dy, dx, (6, 5), slot)
        assert crops.shape == (count, 5, 6, 5)
        for b in range(count):
            expected = padded[0, :, ty[b]:ty[b] + 6, tx[b]:tx[b] + 5].clone()
            for i in range(3):
                for j in range(4):
                    if 0 <= dy[b] + i < 6 and 0 <= dx[b] + j < 5:
                        expected[:, dy[b] + i, dx[b] + j] = patch[b, :, i, j]
            assert torch.equal(crops[b], expected)
    with pytest.raises(ValueError, match="^a chunk needs 84 scratch rows in slot 0; the source has 2 slots of 72$"):
        source.crops(torch.randn(7, 5, 3, 4), *np.zeros((4, 7), np.int64), (6, 5), 0)


def test_lanes_share_one_cache_built_once_per_image(zoo_exports, monkeypatch):
    """Two lanes, two images: the prefix's cached maps are built twice in all (once per image, not per lane),
    every chunk of an image reads the same cached arrays, and the maps equal plain occlusion's."""
    from onnxplain.methods.incremental import IncrementalRunner
    built, caches = [], []
    full, patches = IncrementalRunner._full, IncrementalRunner.patches
    monkeypatch.setattr(IncrementalRunner, "_full", lambda self, x: built.append(1) or full(self, x))
    monkeypatch.setattr(IncrementalRunner, "patches",
                        lambda self, *a: caches.append((id(self.cache[self.plan.cut]), a[-1])) or patches(self, *a))
    ex = Explainer(zoo_exports.path("resnet", "legacy17"), preprocess="raw01", device="cpu", quiet=True,
                   threads=2, batch_size=4)
    images = [image(0), image(1)]
    plain = ex.explain(images, "occlusion", incremental="false", **OCCLUDE)
    fast = ex.explain(images, "occlusion", incremental="true", **OCCLUDE)
    assert len(built) == 2 and len(caches) == 2 * 10  # 36 windows in chunks of at most 4: 10 per image
    assert len({cache for cache, _ in caches[:10]}) == 1 and {slot for _, slot in caches} <= {0, 1}
    for a, b in zip(fast, plain):
        assert a.extras["incremental"]["used"] and rel_err(a.raw, b.raw) < 1e-4


def test_approximate_mode_stays_near_the_exact_map(zoo_exports):
    """Capping the changed region at 70% of each map drops changes: not exact, within 20% of the maximum (15%
    measured: windows of 12 of 32 pixels are a coarse case), and the cost model predicts more gain."""
    ex = Explainer(zoo_exports.path("resnet", "legacy17"), preprocess="raw01", device="cpu", quiet=True)
    [exact] = ex.explain([image()], "occlusion", incremental="false", **OCCLUDE)
    [fast] = ex.explain([image()], "occlusion", incremental="true", **OCCLUDE)
    [approx] = ex.explain([image()], "occlusion", incremental="true", approximate=0.7, **OCCLUDE)
    assert approx.extras["incremental"]["approximate"] == 0.7
    assert approx.extras["incremental"]["predicted_speedup"] > fast.extras["incremental"]["predicted_speedup"]
    assert 1e-3 < rel_err(approx.raw, exact.raw) < 0.2
    with pytest.raises(MethodError, match="Parameter 'approximate' of method 'occlusion' must be 0"):
        ex.explain([image()], "occlusion", approximate=1.5)


@pytest.fixture
def counted(monkeypatch):
    """Rows fed to every onnxruntime session run (model and tails), as a list to read after a call."""
    rows = [0]
    original = Runtime.run

    def run(self, feeds, outputs=None, desc=None):
        first = feeds if isinstance(feeds, np.ndarray) else next(iter(feeds.values()))
        rows[0] += len(first)
        return original(self, feeds, outputs, desc)
    monkeypatch.setattr(Runtime, "run", run)
    return rows


@pytest.mark.parametrize("method, params", [("occlusion", {"window": 8, "stride": 8, "incremental": "false"}),
                                            ("occlusion", {"window": 8, "stride": 8, "incremental": "true"}),
                                            ("recipro-cam", {}), ("ablation-cam", {}), ("score-cam", {}),
                                            ("rise", {"n": 64, "grid": 4})])
def test_top3_in_one_pass_equals_single_targets(zoo_exports, counted, method, params):
    """Each class's map of a top-3 run equals its own single-target run (1e-5); top-3 feeds as many rows as one."""
    ex = Explainer(zoo_exports.path("resnet", "legacy17"), preprocess="raw01", device="cpu", quiet=True)
    x = ex.prepare([image(1)])
    ex.explain(x, method, target=0, **params)  # the batch's cached forward (with the layer) is then shared
    start = counted[0]
    many = ex.explain(x, method, target="top3", **params)
    rows_many = counted[0] - start
    classes = [m.target["index"] for m in many]
    assert len(set(classes)) == 3
    start = counted[0]
    single = ex.explain(x, method, target=classes[0], **params)[0]
    assert counted[0] - start == rows_many
    assert many[0].extras["forwards"] == single.extras["forwards"] > 0
    for attribution, index in zip(many, classes):
        [one] = ex.explain(x, method, target=index, **params)
        assert np.abs(attribution.raw - one.raw).max() <= 1e-5 * max(np.abs(one.raw).max(), 1e-12)


@pytest.mark.parametrize("method, params", [("recipro-cam", {}), ("ablation-cam", {}), ("score-cam", {}),
                                            ("rise", {"n": 64, "grid": 4, "score": "logit"}),
                                            ("occlusion", {"window": 8, "stride": 8})])
def test_all_targets_in_one_pass(zoo_exports, counted, method, params):
    """Target `all` gives every class's map in class order (each equal to its single-target run, 1e-5) from the
    rows of one target."""
    ex = Explainer(zoo_exports.path("resnet", "legacy17"), preprocess="raw01", device="cpu", quiet=True)
    x = ex.prepare([image(2)])
    ex.explain(x, method, target=0, **params)
    start = counted[0]
    every = ex.explain(x, method, target="all", **params)
    rows_all = counted[0] - start
    assert [a.target["index"] for a in every] == list(range(zoo.NUM_CLASSES))
    start = counted[0]
    ex.explain(x, method, target=3, **params)
    assert counted[0] - start == rows_all > 0
    for index in (0, 3, zoo.NUM_CLASSES - 1):
        [one] = ex.explain(x, method, target=index, **params)
        assert np.abs(every[index].raw - one.raw).max() <= 1e-5 * max(np.abs(one.raw).max(), 1e-12)
