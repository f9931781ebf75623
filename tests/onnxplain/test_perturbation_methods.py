"""Perturbation methods on onnxruntime: occlusion, rise, smoothgrad-fd.

Known answers: occlusion against a plain loop and hand-computed captum values, RISE masks against the
authors' skimage recipe, SmoothGrad-FD against the exact gradient of a linear model; peaks in RegionNet's
REGION, the NHWC twin giving the same maps, clear errors for bad parameters, and a pointing game on
EfficientNet-Lite0.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from skimage import data
from skimage.transform import resize
from torch import nn

import helpers
from onnxplain import Explainer
from onnxplain.errors import MethodError
from onnxplain.methods.noise import standard_normal
from onnxplain.methods.resample import half_pixel_resize_matrix
from onnxplain.methods.rise import RiseMasks

# The cat's face in EfficientNet-Lite0's 224x224 centre crop of skimage's chelsea, measured by eye on the
# prepared input written to PNG: outer corner of the left eye (x 34) to the right eye (x 212), top of the
# left eye (y 56) to the bottom of the nose (y 210); (x1, y1, x2, y2) in model-input pixels. The crop is
# filled by the head; the box leaves out the striped forehead and the outer cheeks.
FACE_BOX = (34, 56, 212, 210)


def explainer(path, batch_size: int = 32) -> Explainer:
    return Explainer(path, preprocess="raw01", device="cpu", quiet=True, batch_size=batch_size)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


class Linear(nn.Module):
    """Two scores: w . x and -(w . x), for inputs (N, C, H, W); the gradient of class 0 is w everywhere."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w.flatten())

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([s, -s], dim=1)


@pytest.fixture(scope="module")
def sum_model(tmp_path_factory):
    """f(x) = sum of the 3x3 single-channel input (class 0) and its negative (class 1)."""
    return helpers.export(Linear(torch.ones(1, 3, 3)), tmp_path_factory.mktemp("sum") / "sum.onnx",
                          shape=(1, 1, 3, 3))


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory):
    """f(x) = w . x on 3x8x8 inputs, w ~ N(0, 1) seeded; returns (path, w as (3, 8, 8))."""
    w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(5))
    path = helpers.export(Linear(w), tmp_path_factory.mktemp("linear") / "linear.onnx", shape=(1, 3, 8, 8))
    return path, w.numpy()


# ---- occlusion --------------------------------------------------------------------------------
def reference_occlusion(path, x: np.ndarray, target: int, window, stride, fill) -> np.ndarray:
    """Captum's Occlusion written as a plain loop: one window at a time, one image per forward.

    `x` is one image (C, H, W); scores are softmax probabilities of `target`; windows start every stride
    (the last cut by the border) and each pixel gets the mean drop of the windows covering it.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def prob(image):
        z = session.run(None, {"input": image[None]})[0][0].astype(np.float64)
        return np.exp(z[target] - z.max()) / np.exp(z - z.max()).sum()

    c, h, w = x.shape
    base = prob(x)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for i in range(math.ceil((h - window[0]) / stride[0]) + 1):
        for j in range(math.ceil((w - window[1]) / stride[1]) + 1):
            y0, x0 = i * stride[0], j * stride[1]
            y1, x1 = min(y0 + window[0], h), min(x0 + window[1], w)
            occluded = x.copy()
            occluded[:, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
            total[y0:y1, x0:x1] += base - prob(occluded)
            count[y0:y1, x0:x1] += 1
    return total / count


@pytest.mark.parametrize("fill", ["zero", "mean", "blur", "constant"])
def test_occlusion_equals_reference_loop(region_model, fill):
    """Windows 5x7 with stride 3x4 on 32x32 (the last windows cut by the border); tolerance 1e-5 absolute."""
    ex = explainer(region_model, batch_size=7)
    images = helpers.random_images(2, seed=1)
    got = ex.explain(images, method="occlusion", target=0, window=(5, 7), stride=(3, 4), fill=fill, value=0.7)
    batch = ex.prepare(images)
    for a, x in zip(got, batch.x):
        fills = {"zero": np.zeros_like(x), "constant": np.full_like(x, 0.7),
                 "mean": np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape),
                 "blur": cv2.GaussianBlur(x.transpose(1, 2, 0), (0, 0), 3.5,
                                          borderType=cv2.BORDER_REFLECT).transpose(2, 0, 1)}
        expected = reference_occlusion(region_model, x, 0, (5, 7), (3, 4), fills[fill])
        np.testing.assert_allclose(a.raw, expected, atol=1e-5, rtol=0)
        assert a.extras["drops"].shape == (10, 8)


def test_occlusion_hand_computed_as_captum(sum_model):
    """f = sum of a 3x3 image [[1,2,3],[4,5,6],[7,8,9]], zero fill, logits: values computed by hand.

    2x2 windows, stride 1: the four windows drop 12, 16, 24, 28; a pixel gets the mean over the windows
    covering it (captum's Occlusion). Stride 2: captum's ceil rule gives windows at 0 and 2, the second cut
    to one row/column, each pixel covered once.
    """
    ex = Explainer(sum_model, preprocess="raw255", device="cpu", quiet=True)
    image = np.arange(1, 10, dtype=np.uint8).reshape(3, 3)
    [a] = ex.explain([image], method="occlusion", target=0, window=(2, 2), stride=(1, 1), score="logit")
    np.testing.assert_allclose(a.raw, [[12, 14, 16], [18, 20, 22], [24, 26, 28]], atol=1e-5)
    [b] = ex.explain([image], method="occlusion", target=0, window=(2, 2), stride=(2, 2), score="logit")
    np.testing.assert_allclose(b.raw, [[12, 12, 9], [12, 12, 9], [15, 15, 9]], atol=1e-5)


def test_occlusion_equals_captum(region_model):
    """The same numbers as captum's Occlusion on the torch model (logits, zero baseline); tolerance 1e-5."""
    captum = pytest.importorskip("captum.attr")
    ex = explainer(region_model)
    images = helpers.random_images(2, seed=2)
    ours = ex.explain(images, method="occlusion", target=2, window=(6, 5), stride=(4, 3), score="logit")
    net = helpers.RegionNet().eval()
    x = torch.from_numpy(ex.prepare(images).x)
    theirs = captum.Occlusion(net).attribute(x, sliding_window_shapes=(3, 6, 5), strides=(3, 4, 3), target=2,
                                             baselines=0.0, perturbations_per_eval=64)
    for a, t in zip(ours, theirs):
        np.testing.assert_allclose(a.raw, t[0].numpy(), atol=1e-5)  # captum repeats the map over channels


def test_occlusion_runs_one_forward_per_window(region_model):
    """The unperturbed batch runs once (cached), then one forward per window and image."""
    ex = explainer(region_model)
    before = ex.runtime.forwards
    ex.explain(helpers.random_images(2, seed=3), method="occlusion", target=1, window=(8, 8), stride=(4, 4),
               incremental="false")  # incremental occlusion runs the windows through the model's tail instead
    assert ex.runtime.forwards - before == 2 + 2 * 7 * 7


def test_occlusion_extras_map_activation_and_classes(region_model):
    """Per window position: the layer's total activation, its strongest channel's, and the top class."""
    ex = Explainer(region_model, preprocess="raw01", device="cpu", quiet=True, labels=["ant", "bee", "cat"])
    images = helpers.random_images(2, seed=3)
    got = ex.explain(images, method="occlusion", target=1, window=(8, 8), stride=(4, 4),
                     activation_layer="auto", class_map=True)
    layer = ex.model.auto_layer()[0]
    for a, x in zip(got, ex.prepare(images).x):
        e = a.extras
        assert e["activation_layer"] == layer and e["layer_activation"].shape == (7, 7)
        assert e["class_map"].shape == (7, 7) and set(e["class_legend"]) == set(np.unique(e["class_map"]).tolist())
        assert all(e["class_legend"][k] == ["ant", "bee", "cat"][k] for k in e["class_legend"])
        unoccluded = ex.run(x[None], [layer])[layer][0]
        assert e["channel"] == int(unoccluded.sum((1, 2)).argmax())
        first = x.copy()
        first[:, :8, :8] = 0  # the window at (0, 0), zero fill
        acts = ex.run(first[None], [layer])[layer]
        np.testing.assert_allclose(e["layer_activation"][0, 0], acts.sum(), rtol=1e-5)
        np.testing.assert_allclose(e["channel_activation"][0, 0], acts[0, e["channel"]].sum(), rtol=1e-5)


# ---- rise -------------------------------------------------------------------------------------
def test_rise_masks_follow_the_authors_recipe():
    """Each mask equals skimage's resize (order 1, mode reflect) of its grid to (s + 1) x cell, cropped at its
    shift, as in the authors' generate_masks; tolerance 1e-6."""
    masks = RiseMasks((32, 40), n=6, grid=7, p=0.5, seed=3)
    built = masks.make(0, 6)
    cells = (math.ceil(32 / 7), math.ceil(40 / 7))
    for k in range(6):
        up = resize(masks.grids[k], (8 * cells[0], 8 * cells[1]), order=1, mode="reflect", anti_aliasing=False)
        dy, dx = masks.shifts[0][k], masks.shifts[1][k]
        np.testing.assert_allclose(built[k], up[dy:dy + 32, dx:dx + 40], atol=1e-6)
    rows, cols = half_pixel_resize_matrix(64, 7), half_pixel_resize_matrix(48, 7)
    np.testing.assert_allclose(rows @ np.eye(7, dtype=np.float32) @ cols.T,
                               cv2.resize(np.eye(7, dtype=np.float32), (48, 64)), atol=1e-6)


def test_rise_equals_the_papers_formula(region_model):
    """control_variate=False is sum_i p_i M_i / (n p) verbatim; the default only subtracts
    mean(p) (sum_i M_i / (n p) - 1), whose expectation is 0. Tolerance 1e-5 of the map's range."""
    ex = explainer(region_model, batch_size=16)
    image = helpers.random_images(1, seed=4)
    masks = RiseMasks((32, 32), 100, 7, 0.5, 9).make(0, 100)
    x = ex.prepare(image).x[0]
    z = ex.run(x[None] * masks[:, None])["scores"].astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p = p[:, 2] / p.sum(1)
    paper = np.tensordot(p, masks, 1) / 50
    [plain] = ex.explain(image, method="rise", target=2, n=100, seed=9, control_variate=False)
    [centred] = ex.explain(image, method="rise", target=2, n=100, seed=9)
    assert rel_err(plain.raw, paper) < 1e-5
    assert rel_err(centred.raw, paper - p.mean() * (masks.sum(0) / 50 - 1)) < 1e-5


# ---- smoothgrad-fd ----------------------------------------------------------------------------
def test_smoothgrad_fd_is_exact_on_a_linear_model(linear_model):
    """For f = w . x each antithetic pair gives (w . e) e exactly, so the estimate is (1/n) sum (w . e_i) e_i
    with the seeded noise (tolerance 1e-4 of |w|max), and its relative error ||g - w|| / ||w|| converges as
    sqrt((d + 1) / n), d = 192: below 1.5x that bound for n = 4096 and 16384."""
    path, w = linear_model
    ex = explainer(path, batch_size=512)
    image = helpers.random_images(1, size=8, seed=5)
    [a] = ex.explain(image, method="smoothgrad-fd", target=0, n=64, seed=2, grid=0)
    noise = standard_normal(np.random.default_rng(2), (64, 3, 8, 8)).astype(np.float64)
    expected = np.tensordot(noise.reshape(64, -1) @ w.ravel(), noise, 1) / 64
    assert rel_err(a.extras["gradient"], expected) < 1e-4
    np.testing.assert_allclose(a.raw, np.abs(a.extras["gradient"]).max(0))
    for n in (4096, 16384):
        [a] = ex.explain(image, method="smoothgrad-fd", target=0, n=n, signed=True, grid=0)
        error = np.linalg.norm(a.extras["gradient"] - w) / np.linalg.norm(w)
        assert error < 1.5 * math.sqrt(193 / n), (n, error)
        np.testing.assert_allclose(a.raw, a.extras["gradient"].sum(0), rtol=1e-5)


def test_box_muller_noise_is_standard_normal_whatever_the_chunks():
    """2**20 values: mean within 0.005 of 0, variance within 0.01 of 1, fourth moment within 0.05 of 3
    (about 5 standard errors each); drawing 2 + 3 items equals drawing 5."""
    z = standard_normal(np.random.default_rng(0), (1024, 1024)).astype(np.float64)
    assert abs(z.mean()) < 0.005 and abs(z.var() - 1) < 0.01 and abs((z ** 4).mean() - 3) < 0.05
    rng = np.random.default_rng(1)
    parts = np.concatenate([standard_normal(rng, (2, 3, 5, 7)), standard_normal(rng, (3, 3, 5, 7))])
    assert np.array_equal(parts, standard_normal(np.random.default_rng(1), (5, 3, 5, 7)))


def test_smoothgrad_fd_grid_recovers_a_smooth_gradient(tmp_path):
    """With noise on a 4x4 grid (48 values for 3x8x8) a gradient constant per channel is recovered exactly in
    expectation (the cell-averaging keeps constants): relative error below 0.15 with n = 4096."""
    w = torch.tensor([1.0, -2.0, 0.5])[:, None, None].expand(3, 8, 8)
    ex = explainer(helpers.export(Linear(w), tmp_path / "smooth.onnx", shape=(1, 3, 8, 8)), batch_size=512)
    [a] = ex.explain(helpers.random_images(1, size=8), method="smoothgrad-fd", target=0, n=4096, grid=4)
    assert np.linalg.norm(a.extras["gradient"] - w.numpy()) / np.linalg.norm(w.numpy()) < 0.15


class SmallConvNet(nn.Module):
    """conv-relu-conv-relu-GAP-linear on 3x8x8 (192 input values): nonlinear, small enough for many samples."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                      nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def test_smoothgrad_fd_converges_to_autograd_smoothgrad(tmp_path):
    """On a nonlinear net with 192 input values, the signed map of smoothgrad-fd correlates with autograd
    SmoothGrad (8192 samples through the converter, same sigma 0.15) at r > 0.9 with 4096 pairs (8192
    forwards; measured 0.93 with 2048), and more weakly with 64 pairs (0.32): the error shrinks as the pairs
    grow, as corr^2 ~ n / (n + a)."""
    path = helpers.export(SmallConvNet(), tmp_path / "small.onnx", shape=(1, 3, 8, 8))
    ex = explainer(path, batch_size=512)
    image = helpers.random_images(1, size=8, seed=11)
    [reference] = ex.explain(image, method="smoothgrad", target=1, n=8192, sigma=0.15, signed=True,
                             batch_size=1024)

    def r(pairs: int) -> float:
        [fd] = ex.explain(image, method="smoothgrad-fd", target=1, n=pairs, noise_level=0.15, signed=True,
                         grid=0)
        return float(np.corrcoef(fd.raw.ravel(), reference.raw.ravel())[0, 1])

    few, many = r(64), r(4096)
    assert many > 0.9 and few < many - 0.1, (few, many)


# ---- every method -----------------------------------------------------------------------------
LIGHT = {"occlusion": {}, "rise": {"n": 300}, "smoothgrad-fd": {"n": 256}}




@pytest.mark.parametrize("method", list(LIGHT))
def test_peak_in_region(region_model, method):
    """RegionNet's scores see only REGION: each method's peak lies there, for each class on its image."""
    ex = explainer(region_model)
    for a in ex.explain(list(helpers.region_class_images()), method=method, target=[0, 1, 2], **LIGHT[method]):
        assert helpers.in_region(helpers.peak(a.raw)), (method, a.target["index"], helpers.peak(a.raw))


@pytest.mark.parametrize("method", list(LIGHT))
def test_nhwc_twin_and_batch_size_give_the_same_map(region_model, nhwc_model, method):
    """The NHWC twin of RegionNet (same weights) and another runtime batch size give the same maps
    (tolerance 1e-4 of the map's range): masks and noise are drawn in one order whatever the layout."""
    params = {"n": 64} if "n" in LIGHT[method] else {"window": (6, 6)}
    images = helpers.random_images(2, seed=8)
    ours = explainer(region_model).explain(images, method=method, target=1, **params)
    twin = explainer(nhwc_model, batch_size=5).explain(images, method=method, target=1, **params)
    for a, b in zip(ours, twin):
        assert a.raw.shape == (32, 32) and rel_err(b.raw, a.raw) < 1e-4


@pytest.mark.parametrize("method, params, message", [
    ("occlusion", {"window": (40, 8)}, "window 40x8 is larger than the 32x32 input"),
    ("occlusion", {"window": (4, 4), "stride": (6, 6)}, "stride 6x6 is larger than the window"),
    ("occlusion", {"window": (-1, 4)}, "'window' of method 'occlusion' must be whole pixels"),
    ("occlusion", {"fill": "noise"}, "'fill' of method 'occlusion' cannot be 'noise'"),
    ("occlusion", {"score": "margin"}, "'score' of method 'occlusion' cannot be 'margin'"),
    ("occlusion", {"fill": "blur", "blur_sigma": -2.0}, "'blur_sigma' of method 'occlusion' must be >= 0"),
    ("rise", {"p": 0.0}, "keep probability in \\(0, 1\\]"),
    ("rise", {"grid": 40}, "'grid' of method 'rise' must be between 1 and the input's shorter side \\(32\\)"),
    ("rise", {"n": 0}, "number of masks and must be >= 1"),
    ("smoothgrad-fd", {"n": 0}, "number of noise pairs"),
    ("smoothgrad-fd", {"noise_level": 0.0}, "'noise_level' of method 'smoothgrad-fd' must be > 0"),
    ("smoothgrad-fd", {"grid": 33}, "cell count up to the input's shorter side \\(32\\)"),
])
def test_bad_params_say_what_to_do(region_model, method, params, message):
    with pytest.raises(MethodError, match=message):
        explainer(region_model).explain(helpers.random_images(1), method=method, **params)


def test_occlusion_points_at_the_cats_face(effnet):
    """Pointing game on EfficientNet-Lite0: the map's peak (defaults but 32x32 windows, stride 16, for speed)
    lies inside FACE_BOX for the predicted class (tiger cat)."""
    ex = Explainer(effnet, device="cpu", quiet=True)
    [a] = ex.explain([data.chelsea()], method="occlusion", window=(32, 32), stride=(16, 16))
    assert a.target["name"] == "tiger cat"
    row, col = helpers.peak(a.raw)
    x1, y1, x2, y2 = FACE_BOX
    assert x1 <= col < x2 and y1 <= row < y2, (row, col)
