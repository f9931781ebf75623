"""The shared method toolbox: the noise wrapper, layouts, resampling matrices, the baseline builder, softmax,
choice errors and the abstract Method contract. Tolerances are stated per test."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import helpers
import onnxplain
from onnxplain.errors import MethodError, UserError
from onnxplain.images import preset
from onnxplain.methods import REGISTRY, register
from onnxplain.methods.base import Method, RawMaps
from onnxplain.methods.baselines import baseline
from onnxplain.methods.layout import (channel_axis, channels_first_np, channels_first_torch, chw_shape,
                                      from_channels_first_np, hwc_to_image_np, image_to_hwc_np, input_to_nchw_np,
                                      input_to_nchw_torch, nchw_to_input_np, nchw_to_input_torch)
from onnxplain.methods.noise import gaussian_noise, moments, noise_std, noise_tunnel
from onnxplain.methods.perturb import choose
from onnxplain.methods.resample import align_corners_resize_matrix, half_pixel_resize_matrix
from onnxplain.model import TensorInfo
from onnxplain.numeric import softmax


# ---- noise wrapper ------------------------------------------------------------------------------------
def linear_gradient(w: torch.Tensor):
    """The autograd gradient of f(v) = sum(w * v), one per row: w whatever the input."""
    def gradient(v: torch.Tensor) -> torch.Tensor:
        v = v.detach().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad((v * w).sum(), v)[0]
    return gradient


def test_noise_around_a_linear_functions_gradient_is_the_gradient():
    """SmoothGrad of a linear score equals its gradient and VarGrad is zero, at any noise level (float32:
    rtol 1e-6, VarGrad within 1e-6 of the squared gradient's scale)."""
    w = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    noise = gaussian_noise((3, 5, 4), 11, 2.5, seed=3, layout="NCHW")
    mean, square = noise_tunnel(linear_gradient(w), x, noise, batch_size=4, order=2)
    torch.testing.assert_close(mean, w, rtol=1e-6, atol=0)
    torch.testing.assert_close(square, w * w, rtol=1e-6, atol=0)
    assert float((square - mean ** 2).abs().max()) <= 1e-6 * float((w * w).max())


def test_second_and_third_moments_of_a_quadratics_gradient():
    """f(v) = a v^2 / 2 has gradient a v; over draws e: mean a(x + mean e), second moment
    a^2 (x^2 + 2 x mean(e) + mean(e^2)), third a^3 mean((x + e)^3) (float64, rtol 1e-12). With many draws
    of N(0, s^2) VarGrad tends to a^2 s^2 (20000 draws: 3%)."""
    rng = np.random.default_rng(0)
    a, x = 1.7, rng.normal(size=(2, 3))
    e = rng.normal(scale=0.5, size=(20000, 2, 3))
    mean, square, cube = noise_tunnel(lambda v: a * v, x, e, batch_size=999, order=3)
    np.testing.assert_allclose(mean, a * (x + e.mean(0)), rtol=1e-12)
    np.testing.assert_allclose(square, a * a * (x * x + 2 * x * e.mean(0) + (e * e).mean(0)), rtol=1e-12)
    np.testing.assert_allclose(cube, a ** 3 * ((x + e) ** 3).mean(0), rtol=1e-12)
    np.testing.assert_allclose(square - mean ** 2, np.full_like(x, a * a * 0.25), rtol=0.03)


def test_moments_do_not_depend_on_chunking():
    """One chunk or chunks of 1, 3, 7 give the same moments (float64, 1e-12)."""
    values = np.random.default_rng(1).normal(size=(13, 4))
    whole = moments([values], 13, order=2)
    for size in (1, 3, 7):
        parts = moments((values[s:s + size] for s in range(0, 13, size)), 13, order=2)
        for got, want in zip(parts, whole):
            np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(whole[1], (values ** 2).mean(0), rtol=1e-12)


def test_gaussian_noise_is_seeded_and_layout_independent():
    """The same seed gives the same draws; NHWC noise is the NCHW noise transposed (exact); std scales it."""
    nchw = gaussian_noise((3, 4, 5), 6, 0.5, seed=2, layout="NCHW")
    assert torch.equal(nchw, gaussian_noise((3, 4, 5), 6, 0.5, seed=2, layout="NCHW"))
    assert torch.equal(gaussian_noise((3, 4, 5), 6, 0.5, seed=2, layout="NHWC"), nchw.permute(0, 2, 3, 1))
    assert torch.allclose(gaussian_noise((3, 4, 5), 6, 1.0, seed=2, layout="NCHW") * 0.5, nchw)
    assert not torch.equal(nchw, gaussian_noise((3, 4, 5), 6, 0.5, seed=3, layout="NCHW"))


def test_noise_std_is_a_fraction_of_the_value_range():
    image = np.array([[-1.0, 3.0]], np.float32)
    assert noise_std(image, 0.15) == pytest.approx(0.6)
    assert noise_std(np.ones((2, 2), np.float32), 0.15, fallback=2.0) == pytest.approx(0.3)
    assert noise_std(np.ones((2, 2), np.float32), 0.15) == 0.0


# ---- layouts -------------------------------------------------------------------------------------------
def info(layout: str, shape, grid=None) -> TensorInfo:
    return TensorInfo("t", "Relu", "n", "float32", tuple(shape), layout=layout, grid=grid)


@pytest.mark.parametrize("layout, shape, grid, nchw", [
    ("NCHW", (2, 3, 4, 5), None, lambda v: v),
    ("NHWC", (2, 4, 5, 3), None, lambda v: v.transpose(0, 3, 1, 2)),
    ("tokens", (2, 1 + 4 * 5, 3), (4, 5), lambda v: v[:, 1:].transpose(0, 2, 1).reshape(2, 3, 4, 5)),
    ("tokens", (2, 4 * 5, 3), (4, 5), lambda v: v.transpose(0, 2, 1).reshape(2, 3, 4, 5)),
])
def test_layer_layouts_to_channels_first_and_back(layout, shape, grid, nchw):
    """numpy and torch give the same (N, C, h, w) (exact); the inverse restores the tensor, class token included."""
    t = info(layout, shape, grid)
    value = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    first = channels_first_np(value, t)
    np.testing.assert_array_equal(first, nchw(value))
    np.testing.assert_array_equal(channels_first_torch(torch.from_numpy(value), t).numpy(), first)
    np.testing.assert_array_equal(from_channels_first_np(first, t, like=value), value)


def test_non_spatial_tensors_are_refused_by_name():
    flat = TensorInfo("logits", "Gemm", "n", "float32", (1, 10))
    for convert in (lambda: channels_first_np(np.zeros((1, 10)), flat),
                    lambda: channels_first_torch(torch.zeros(1, 10), flat),
                    lambda: from_channels_first_np(np.zeros((1, 10, 1, 1)), flat)):
        with pytest.raises(MethodError, match=r"^Tensor 'logits' is not a spatial map; pick one from"):
            convert()


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_input_layouts(layout):
    """Batches and single images to channels-first / channels-last and back (exact), numpy and torch alike."""
    nchw = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    x = nchw_to_input_np(nchw, layout)
    assert x.shape == ((2, 3, 4, 5) if layout == "NCHW" else (2, 4, 5, 3))
    np.testing.assert_array_equal(input_to_nchw_np(x, layout), nchw)
    np.testing.assert_array_equal(nchw_to_input_torch(torch.from_numpy(nchw), layout).numpy(), x)
    np.testing.assert_array_equal(input_to_nchw_torch(torch.from_numpy(x), layout).numpy(), nchw)
    np.testing.assert_array_equal(image_to_hwc_np(x[0], layout), nchw[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(hwc_to_image_np(image_to_hwc_np(x[0], layout), layout), x[0])
    assert chw_shape(x[0], layout) == (3, 4, 5)
    assert x.shape[channel_axis(layout)] == 3


# ---- resampling matrices ---------------------------------------------------------------------------
def test_resampling_matrices_match_cv2_and_torch():
    """Half-pixel centres = cv2.resize INTER_LINEAR; aligned corners = torch align_corners=True (1e-6)."""
    image = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    half = half_pixel_resize_matrix(12, 5) @ image @ half_pixel_resize_matrix(9, 7).T
    np.testing.assert_allclose(half, cv2.resize(image, (9, 12), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    corners = align_corners_resize_matrix(12, 5) @ image @ align_corners_resize_matrix(9, 7).T
    want = F.interpolate(torch.from_numpy(image)[None, None], size=(12, 9), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(corners, want[0, 0].numpy(), atol=1e-6)
    assert half_pixel_resize_matrix(4, 3).dtype == align_corners_resize_matrix(4, 3).dtype == np.float32


# ---- baselines ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_baseline_builder(layout):
    """Each kind's known value (exact, blur 1e-6 against cv2), in the image's layout and dtype."""
    chw = np.random.default_rng(0).random((3, 6, 8)).astype(np.float32)
    x = chw if layout == "NCHW" else chw.transpose(1, 2, 0)
    as_chw = (lambda v: v) if layout == "NCHW" else (lambda v: v.transpose(2, 0, 1))
    imagenet = preset("imagenet")
    low = (0 - np.array(imagenet.mean, np.float32)) / np.array(imagenet.std, np.float32)
    high = (1 - np.array(imagenet.mean, np.float32)) / np.array(imagenet.std, np.float32)
    for kind, want in [("zero", np.zeros_like(chw)), ("constant", np.full_like(chw, 0.25)),
                       ("mean", np.broadcast_to(chw.mean((1, 2), keepdims=True), chw.shape)),
                       ("black", np.broadcast_to(low[:, None, None], chw.shape))]:
        got = baseline(x, layout, kind, value=0.25, preprocess=imagenet)
        assert got.shape == x.shape and got.dtype == np.float32
        np.testing.assert_allclose(as_chw(got), want, rtol=1e-6, atol=1e-6)
    blurred = cv2.GaussianBlur(np.ascontiguousarray(chw.transpose(1, 2, 0)), (0, 0), 2.0,
                               borderType=cv2.BORDER_REFLECT).transpose(2, 0, 1)
    np.testing.assert_allclose(as_chw(baseline(x, layout, "blur", sigma=2.0)), blurred, atol=1e-6)
    uniform = as_chw(baseline(x, layout, "uniform", preprocess=imagenet, seed=4))
    assert np.all(uniform >= low[:, None, None] - 1e-6) and np.all(uniform <= high[:, None, None] + 1e-6)
    np.testing.assert_array_equal(uniform, as_chw(baseline(x, layout, "uniform", preprocess=imagenet, seed=4)))
    with pytest.raises(MethodError, match=r"^Unknown baseline 'noise'; use one of zero, constant, mean"):
        baseline(x, layout, "noise")


def test_blur_kernel_and_border_options():
    """An 11x11 window (as the deletion/insertion metrics use) and reflect101 borders reach cv2's (1e-6)."""
    hwc = np.random.default_rng(1).random((16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(baseline(hwc, "NHWC", "blur", sigma=5.0, kernel=11),
                               cv2.GaussianBlur(hwc, (11, 11), 5.0, borderType=cv2.BORDER_REFLECT), atol=1e-6)
    np.testing.assert_allclose(baseline(hwc, "NHWC", "blur", sigma=3.0, border="reflect101"),
                               cv2.GaussianBlur(hwc, (0, 0), 3.0), atol=1e-6)


# ---- softmax and choices -------------------------------------------------------------------------------
def test_softmax():
    """Rows sum to 1, large logits do not overflow, and it equals torch's softmax (1e-6)."""
    x = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]])
    p = softmax(x, axis=1)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, torch.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(softmax(x[1]), np.full(3, 1 / 3), rtol=1e-12)


def test_choice_errors_have_one_wording():
    assert choose("rise", "score", "logit", ("logit", "probability")) == "logit"
    with pytest.raises(MethodError) as error:
        choose("smoothgrad", "kind", "meangrad", ("smoothgrad", "squaregrad"))
    assert str(error.value) == ("Parameter 'kind' of method 'smoothgrad' cannot be 'meangrad'; use one of "
                                "smoothgrad, squaregrad.")


# ---- the Method contract -------------------------------------------------------------------------------
class NoExplain(Method):
    """Test-only: forgets to implement explain."""
    name = "test-no-explain"
    engine = "ort"


def test_a_method_without_explain_is_a_programming_error(region_model):
    """Instantiating it raises TypeError (a traceback), not a UserError printed as one line."""
    with pytest.raises(TypeError, match="abstract"):
        NoExplain()
    register(NoExplain)
    try:
        ex = onnxplain.load(region_model, preprocess="raw01", quiet=True)
        with pytest.raises(TypeError) as error:
            ex.explain(helpers.random_images(1), method=NoExplain.name, target=0)
        assert not isinstance(error.value, UserError)
    finally:
        REGISTRY.pop(NoExplain.name, None)


def test_a_method_with_explain_runs():
    class Flat(NoExplain):
        def explain(self, context, batch, targets, layer=None) -> RawMaps:
            return RawMaps(np.zeros((len(targets), 2, 2)))
    assert Flat().explain(None, None, [0]).maps.shape == (1, 2, 2)
