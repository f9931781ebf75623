"""Gradient methods on the torch engine: saliency, smoothgrad, integrated-gradients, guided-backprop, deconvnet,
the Grad-CAM family, smooth-grad-cam++, guided-grad-cam and fullgrad.

Parity: pytorch-grad-cam's maps on the native torch model (fixtures written by tests/fixtures/
make_gradcam_reference.py, which needs torchvision and runs in its own venv) and captum's live,
against ours on the legacy and dynamo ONNX exports of the same weights. Tolerance: Pearson r >= 0.99
of the maps upsampled to the input (cv2.resize, bilinear) *and* a max difference <= 1e-3 of the
min-max scaled maps; both hold with r > 0.99999 today, since the definitions are identical.
Known answers: Grad-CAM on a GAP network equals CAM / (h*w); Smooth Grad-CAM++ with one noiseless copy
equals Grad-CAM++; SmoothGrad with sigma 0 equals saliency. Batch independence for every method.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import helpers
import zoo
from onnxplain import Explainer
from onnxplain.errors import MethodError
from onnxplain.images import PixelMap, Prepared, normalise
from onnxplain.methods import list_methods

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KINDS = ("legacy17", "dynamo")
CAMS = ("grad-cam", "grad-cam++", "xgrad-cam", "layer-cam", "hires-cam")
OURS = ("saliency", "smoothgrad", "integrated-gradients", "guided-backprop", "deconvnet", *CAMS,
        "smooth-grad-cam++", "guided-grad-cam", "fullgrad")
LIGHT = {"smoothgrad": {"n": 4, "batch_size": 3}, "integrated-gradients": {"steps": 6, "batch_size": 5},
         "smooth-grad-cam++": {"n": 3, "batch_size": 2}}


# ---- helpers ---------------------------------------------------------------------------------------
def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1])


def scaled(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return (a - a.min()) / max(a.max() - a.min(), 1e-12)


def assert_same_map(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Pearson r >= 0.99 and min-max scaled maps within 1e-3 (a flat reference must be flat here too)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    if np.ptp(ref) < 1e-12:
        assert np.ptp(ours) <= 1e-6 * max(np.abs(ours).max(), 1e-12), what
        return
    assert pearson(ours, ref) >= 0.99, f"{what}: r = {pearson(ours, ref):.6f}"
    assert np.abs(scaled(ours) - scaled(ref)).max() <= 1e-3, what


def upsampled(raw: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return cv2.resize(raw.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def prepared(explainer: Explainer, x: np.ndarray) -> Prepared:
    """A batch that feeds `x` (model layout, already normalised) unchanged, for parity with torch references."""
    n, h, w = len(x), *x.shape[2:]
    identity = PixelMap(np.array([[1.0, 0, 0], [0, 1, 0]]), (h, w), (h, w))
    return Prepared(np.ascontiguousarray(x, np.float32), [np.zeros((h, w, 3), np.uint8)] * n, [identity] * n,
                    [f"x{i}" for i in range(n)], explainer.spec, explainer.preprocess)


@functools.lru_cache(maxsize=None)
def fixture(name: str) -> dict:
    with np.load(FIXTURES / f"gradcam_{name}.npz") as data:
        return {k: data[k] for k in data.files}


@functools.lru_cache(maxsize=None)
def fixture_model(name: str) -> torch.nn.Module:
    """The zoo model class with the fixture's weights (as pytorch-grad-cam saw them)."""
    model = zoo.MODELS[name]()
    weights = fixture(name)
    model.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in weights.items() if k.startswith("w/")})
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(name, kind) -> Explainer on the export of the fixture model (each exported once per module)."""
    folder = tmp_path_factory.mktemp("gradient")
    cache: dict = {}

    def get(name: str, kind: str) -> Explainer:
        if (name, kind) not in cache:
            path = zoo.export(fixture_model(name), folder / f"{name}_{kind}.onnx", kind)
            cache[name, kind] = Explainer(path, device="cpu", quiet=True)
        return cache[name, kind]
    return get


# ---- parity with pytorch-grad-cam (fixtures) ----------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_cam_family_fullgrad_guided_match_pytorch_grad_cam(name, kind, exported):
    ref = fixture(name)
    explainer = exported(name, kind)
    batch = prepared(explainer, ref["x"])
    targets = [int(t) for t in ref["targets"]]
    layer = explainer.model.auto_layer()[0]
    np.testing.assert_allclose(explainer.forward(batch, [layer])[layer], ref["act"], atol=1e-5)  # same tensor
    for method in (*CAMS, "fullgrad", "guided-backprop"):
        params = {"mode": "pytorch-grad-cam"} if method == "fullgrad" else {}
        results = explainer.explain(batch, method=method, target=targets, layer=layer, **params)
        for i, attribution in enumerate(results):
            if method == "guided-backprop":  # the colour gradient, as pytorch-grad-cam returns it (H, W, C)
                ours = attribution.extras["gradient"].transpose(1, 2, 0)
            else:
                ours = upsampled(attribution.raw, batch.hw)
            assert_same_map(ours, ref[f"map/{method}"][i], f"{name} {kind} {method} image {i}")


def test_effnet_lite0_grad_cam_and_saliency_match_references(effnet):
    """EfficientNet-Lite0 on skimage's chelsea: Grad-CAM (pytorch-grad-cam at _bn1, the head conv's output)
    and saliency (captum) of the native model, against ours on the bundled legacy export."""
    ref = fixture("effnet")
    explainer = Explainer(effnet, device="cpu", quiet=True)
    batch = prepared(explainer, ref["x"].astype(np.float32))
    target = int(ref["target"])
    [cam] = explainer.explain(batch, method="grad-cam", target=target, layer="/_conv_head/Conv_output_0")
    assert cam.raw.shape == (7, 7)
    assert_same_map(upsampled(cam.raw, batch.hw), ref["map/grad-cam"], "effnet grad-cam")
    [saliency] = explainer.explain(batch, method="saliency", target=target)
    # pixel gradients of a 60-layer net differ locally where BatchNorm folding moves a ReLU6 input across a bound
    # (r = 0.999997, a few pixels off by ~1.4% of the peak): r >= 0.99 and scaled maps within 0.05
    assert pearson(saliency.raw, ref["map/saliency"]) >= 0.99
    assert np.abs(scaled(saliency.raw) - scaled(ref["map/saliency"])).max() <= 0.05


# ---- parity with captum (live) ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")  # captum: "Input Tensor 0 did not already require gradients"
@pytest.mark.parametrize("kind", KINDS)
def test_pixel_methods_match_captum(kind, exported):
    attr = pytest.importorskip("captum.attr")
    model = fixture_model("resnet")
    explainer = exported("resnet", kind)
    x = torch.from_numpy(fixture("resnet")["x"])
    targets = [int(t) for t in fixture("resnet")["targets"]]
    batch = prepared(explainer, x.numpy())

    def check(method: str, reference: torch.Tensor, **params):
        for i, attribution in enumerate(explainer.explain(batch, method=method, target=targets, **params)):
            assert_same_map(attribution.raw, reference[i].detach().numpy(), f"{kind} {method} {params} image {i}")

    check("saliency", attr.Saliency(model).attribute(x.clone(), target=targets, abs=True).amax(1))
    check("guided-backprop", attr.GuidedBackprop(model).attribute(x.clone(), target=targets).abs().amax(1))
    check("deconvnet", attr.Deconvolution(model).attribute(x.clone(), target=targets).abs().amax(1))

    black = torch.from_numpy(normalise(np.zeros((1, 1, 3), np.uint8), explainer.preprocess).reshape(1, 3, 1, 1))
    for quadrature in ("gausslegendre", "riemann_trapezoid"):
        ref, delta = attr.IntegratedGradients(model).attribute(
            x, baselines=black.expand_as(x), target=targets, n_steps=16, method=quadrature,
            return_convergence_delta=True)
        results = explainer.explain(batch, method="integrated-gradients", target=targets, steps=16,
                                    quadrature=quadrature, batch_size=7)
        for i, attribution in enumerate(results):
            assert_same_map(attribution.extras["attribution"], ref[i].numpy(), f"{kind} ig {quadrature} image {i}")
            assert_same_map(attribution.raw, ref[i].sum(0).numpy(), f"{kind} ig map {quadrature} image {i}")
            check_delta = attribution.extras["completeness"]
            assert check_delta["sum_attr"] - check_delta["f(x)-f(baseline)"] == pytest.approx(
                float(delta[i]), abs=1e-4)

    # captum draws its noise with torch.normal after the global seed; ours draws the same numbers from a
    # generator seeded per image, so one image at a time gives identical noise.
    for kind_, nt_type in (("smoothgrad", "smoothgrad"), ("squaregrad", "smoothgrad_sq"), ("vargrad", "vargrad")):
        results = explainer.explain(batch, method="smoothgrad", target=targets, n=6, kind=kind_, seed=5,
                                    batch_size=4)
        for i, attribution in enumerate(results):
            torch.manual_seed(5)
            std = 0.15 * float(x[i].max() - x[i].min())
            ref = attr.NoiseTunnel(attr.Saliency(model)).attribute(
                x[i:i + 1], nt_type=nt_type, nt_samples=6, stdevs=std, target=targets[i], abs=False)
            assert_same_map(attribution.raw, ref.abs().amax(1)[0].numpy(), f"{kind} {kind_} image {i}")


# ---- known answers -------------------------------------------------------------------------------------
def test_grad_cam_on_gap_network_is_cam_over_area(region_model):
    """GAP then linear: y_c = sum_k w_ck mean(A_k) + b, so dy/dA_k = w_ck / (h*w) everywhere and Grad-CAM's
    weights are w_ck / (h*w): Grad-CAM = CAM / (h*w) and HiRes-CAM = Grad-CAM exactly (float32: rtol 1e-4)."""
    explainer = Explainer(region_model, preprocess="raw01", device="cpu", quiet=True)
    images = helpers.random_images(3, seed=11)
    for target in (0, 1, 2):
        cam = [a.raw for a in explainer.explain(images, method="cam", target=target)]
        grad_cam = [a.raw for a in explainer.explain(images, method="grad-cam", target=target)]
        hires = [a.raw for a in explainer.explain(images, method="hires-cam", target=target)]
        for c, g, h in zip(cam, grad_cam, hires):
            area = g.shape[0] * g.shape[1]
            np.testing.assert_allclose(g * area, c, rtol=1e-4, atol=1e-6 * max(c.max(), 1e-9))
            np.testing.assert_allclose(h, g, rtol=1e-5, atol=1e-9)
    positive = [a for a in explainer.explain(images, method="grad-cam") if a.raw.max() > 0]
    assert len(positive) >= 2 and all(helpers.in_region(helpers.peak(a.upsampled)) for a in positive)


def test_noiseless_smoothing_reduces_to_the_plain_method(exported):
    explainer = exported("resnet", "legacy17")
    batch = prepared(explainer, fixture("resnet")["x"])
    targets = [int(t) for t in fixture("resnet")["targets"]]
    layer = explainer.model.auto_layer()[0]

    def maps(method, **params):
        return np.stack([a.raw for a in explainer.explain(batch, method=method, target=targets, layer=layer,
                                                          **params)])
    np.testing.assert_allclose(maps("smooth-grad-cam++", n=1, sigma=0.0), maps("grad-cam++"), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(maps("smooth-grad-cam++", n=0), maps("grad-cam++"), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(maps("smoothgrad", n=2, sigma=0.0), maps("saliency"), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(maps("smoothgrad", n=2, sigma=0.0, signed=True), maps("saliency", signed=True),
                               rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(maps("smoothgrad", n=2, sigma=0.0, kind="vargrad"), 0, atol=1e-10)


def test_smooth_grad_cam_pp_filters_and_neurons(exported):
    """filters keeps feature maps out of the sum; neurons restricts the positions the weights are summed over."""
    explainer = exported("resnet", "legacy17")
    batch = prepared(explainer, fixture("resnet")["x"][:1])
    target = int(fixture("resnet")["targets"][0])
    layer = explainer.model.auto_layer()[0]
    info = explainer.model.spatial_info(layer)
    c, (h, w) = info.channels, info.hw

    def sgcpp(**params):
        return explainer.explain(batch, method="smooth-grad-cam++", target=target, layer=layer, n=1, sigma=0.0,
                                 **params)[0].raw
    full = sgcpp()
    np.testing.assert_allclose(sgcpp(filters=tuple(range(c))), full, rtol=1e-6)
    np.testing.assert_allclose(sgcpp(neurons=(0, 0, h - 1, w - 1), region=True), full, rtol=1e-6)
    np.testing.assert_allclose(sgcpp(neurons=(2, 3, 2, 3), region=True), sgcpp(neurons=(2, 3)), rtol=1e-6)
    np.testing.assert_allclose(sgcpp(neurons="2,3"), sgcpp(neurons=(2, 3)), rtol=1e-6)  # as the CLI passes it

    # by hand: Grad-CAM++ weights from the layer's gradient, then one filter / one neuron
    x = torch.from_numpy(batch.x)
    (logits,), taps = explainer.module(x, taps=[layer])
    acts = taps[layer]
    (grad,) = torch.autograd.grad(logits[0, target], acts)
    acts, grad = acts.detach().double(), grad.double()
    sum_acts = acts.sum((2, 3), keepdim=True)
    alpha = torch.where(grad != 0, grad ** 2 / (2 * grad ** 2 + sum_acts * grad ** 3 + 1e-6), torch.zeros_like(grad))
    contribution = torch.relu(grad) * alpha
    weights = contribution.sum((2, 3))[0]
    k = int(torch.argmax(weights))
    np.testing.assert_allclose(sgcpp(filters=(k,)), torch.relu(weights[k] * acts[0, k]).numpy(), rtol=1e-4,
                               atol=1e-7)
    neuron_weights = contribution[0, :, 2, 3]
    only = torch.zeros(h, w, dtype=torch.float64)
    only[2, 3] = torch.relu((neuron_weights * acts[0, :, 2, 3]).sum())
    np.testing.assert_allclose(sgcpp(neurons=(2, 3)), only.numpy(), rtol=1e-4, atol=1e-7)
    two = sgcpp(neurons=(2, 3, 0, 1))  # other activations zeroed: non-zero at the chosen neurons only
    assert set(zip(*np.nonzero(two))) <= {(2, 3), (0, 1)} and two[2, 3] > 0
    [result] = explainer.explain(batch, method="smooth-grad-cam++", target=target, layer=layer, n=1, sigma=0.0,
                                 filters=(k, 0, 1))
    assert result.extras["filters"] == [k, 0, 1] and result.extras["filter_maps"].shape == (3, h, w)
    np.testing.assert_allclose(result.extras["filter_maps"][0], sgcpp(filters=(k,)), rtol=1e-6)
    np.testing.assert_allclose(result.extras["filter_maps"][2],
                               torch.relu(weights[1] * acts[0, 1]).numpy(), rtol=1e-4, atol=1e-7)
    with pytest.raises(MethodError, match="out of range"):
        sgcpp(filters=(c,))
    with pytest.raises(MethodError, match="outside"):
        sgcpp(neurons=(h, 0))


def test_integrated_gradients_baselines_and_completeness(exported):
    """Completeness (sum of attributions = f(x) - f(baseline)) tightens with steps for every baseline."""
    explainer = exported("resnet", "legacy17")
    batch = prepared(explainer, fixture("resnet")["x"][:1])
    for baseline in ("black", "blurred", "uniform"):
        errors = []
        for steps in (4, 64):
            [a] = explainer.explain(batch, method="integrated-gradients", target=0, steps=steps, baseline=baseline,
                                    blur_sigma=3.0)
            check = a.extras["completeness"]
            errors.append(abs(check["sum_attr"] - check["f(x)-f(baseline)"]))
            assert a.extras["attribution"].shape == (3, 32, 32)
        assert errors[1] < 0.02 * abs(check["f(x)-f(baseline)"]) + 1e-4, (baseline, errors)
        assert errors[1] <= errors[0] + 1e-6, (baseline, errors)


def test_grad_cam_on_token_grid_matches_native_vit(tmp_path):
    """A ViT's token tensor (class token + 4x4 grid) reshaped to (C, 4, 4): Grad-CAM equals the same formula on the
    native model's hooked block output (rtol 1e-4)."""
    model = zoo.build("vit")
    explainer = Explainer(zoo.export(model, tmp_path / "vit.onnx", "legacy17"), device="cpu", quiet=True)
    layer = "/blocks/blocks.1/Add_1_output_0"
    x = zoo.sample(2, seed=4)
    batch = prepared(explainer, x.numpy())
    ours = np.stack([a.raw for a in explainer.explain(batch, method="grad-cam", target=[3, 5], layer=layer)])
    seen = []

    def keep(module, inputs, output):
        output.retain_grad()
        seen.append(output)
    handle = model.blocks.register_forward_hook(keep)
    logits = model(x)
    handle.remove()
    (logits[0, 3] + logits[1, 5]).backward()
    acts = seen[0][:, 1:].transpose(1, 2).reshape(2, -1, 4, 4)
    grads = seen[0].grad[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4)
    expected = torch.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1)).detach().numpy()
    assert ours.shape == (2, 4, 4)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())


# ---- conformance: batch independence, errors ------------------------------------------------------------
@pytest.mark.parametrize("method", OURS)
def test_batch_equals_images_one_by_one(method, exported):
    """Three images with different targets in one call give each image's map alone (rtol 1e-4 of its range)."""
    explainer = exported("resnet", "legacy17")
    images = helpers.random_images(3, size=32, seed=3)
    params = LIGHT.get(method, {})
    together = explainer.explain(images, method=method, target=[1, 4, 7], **params)
    for i, image in enumerate(images):
        [alone] = explainer.explain([image], method=method, target=[1, 4, 7][i], **params)
        scale = max(float(np.abs(together[i].raw).max()), 1e-12)
        assert np.abs(alone.raw - together[i].raw).max() <= 1e-4 * scale, method
        assert np.isfinite(alone.raw).all() and alone.raw.dtype == np.float32


def _unsupported_model(op: str) -> onnx.ModelProto:
    body = {"Shrink": "s = Shrink <lambd = 0.5> (input)",
            "CumSum": "axis = Constant <value_int = 3> ()\n s = CumSum (input, axis)"}[op]
    return onnx.parser.parse_model(f"""
        <ir_version: 8, opset_import: ["" : 17]>
        tiny (float[N, 3, 8, 8] input) => (float[N, 3] scores) {{
            {body}
            p = GlobalAveragePool (s)
            scores = Flatten <axis = 1> (p)
        }}""")


def test_unsupported_op_gives_one_sentence():
    import onnxtorch
    op = next((op for op in ("Shrink", "CumSum") if onnxtorch.check(_unsupported_model(op))), None)
    assert op is not None, "the converter learnt Shrink and CumSum: pick another op onnxruntime runs"
    explainer = Explainer(_unsupported_model(op).SerializeToString(), preprocess="raw01", device="cpu", quiet=True)
    images = helpers.random_images(2, size=8)
    assert len(explainer.predict(images)) == 2  # onnxruntime still runs it
    ort_methods = [m["name"] for m in list_methods() if m["engine"] == "ort"]
    for method in OURS:
        with pytest.raises(MethodError) as info:
            explainer.explain(images, method=method, target=0)
        message = str(info.value)  # one sentence: no line break, no full stop before the end
        assert op in message and "\n" not in message and ". " not in message and message.endswith(".")
        assert any(name in message for name in ort_methods)


def test_bad_parameters_name_the_choices(exported):
    explainer = exported("resnet", "legacy17")
    images = helpers.random_images(1)
    with pytest.raises(MethodError, match="squaregrad"):
        explainer.explain(images, method="smoothgrad", kind="square")
    with pytest.raises(MethodError, match="blurred"):
        explainer.explain(images, method="integrated-gradients", baseline="white")
    with pytest.raises(MethodError, match="gausslegendre"):
        explainer.explain(images, method="integrated-gradients", quadrature="simpson")
