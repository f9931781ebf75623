"""Forward-only CAM family: cam, score-cam, ablation-cam, recipro-cam, eigen-cam.

Known answers on tiny torch models exported at test time (hand-computed CAM, reference loops through the
whole model), every method on NCHW, NHWC and token layouts, and a pointing game on EfficientNet-Lite0.
"""
from __future__ import annotations


import tracemalloc

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from skimage import data
from torch import nn

import helpers
from onnxplain import Explainer
from onnxplain.errors import MethodError
from onnxplain.methods import scorecam
from onnxplain.methods.scorecam import distinct_masks

METHODS = ["cam", "score-cam", "ablation-cam", "recipro-cam", "eigen-cam"]
# The cat's face in EfficientNet-Lite0's 224x224 centre-cropped input of skimage's chelsea, measured by eye
# on the prepared input: outer corner of the left eye (x 34) to the right eye (x 212), top of the left eye
# (y 56) to the bottom of the nose (y 210). (x1, y1, x2, y2), model-input pixels.
FACE_BOX = (34, 56, 212, 210)


def explainer(path) -> Explainer:
    return Explainer(path, preprocess="raw01", device="cpu", quiet=True)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))




class NHWCHead(nn.Module):
    """conv -> transpose to NHWC -> relu -> mean over H, W -> x @ w + b (MatMul + Add), like tf2onnx graphs.

    With relu_first the relu comes before the transpose, so the layer is NCHW and a Transpose precedes pooling.
    """

    def __init__(self, relu_first: bool = False):
        super().__init__()
        torch.manual_seed(2)
        self.relu_first = relu_first
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.w = nn.Parameter(torch.randn(6, 3))
        self.b = nn.Parameter(torch.randn(3))

    def forward(self, x):
        a = torch.relu(self.conv(x)).permute(0, 2, 3, 1) if self.relu_first else \
            torch.relu(self.conv(x).permute(0, 2, 3, 1))
        return a.mean(dim=(1, 2)) @ self.w + self.b


class TokenNet(nn.Module):
    """8x8 patches -> 16 tokens plus a class token -> per-token linear + relu -> mean of all tokens -> linear."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.patch = nn.Conv2d(3, 8, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        return self.fc(torch.relu(self.mix(tokens)).mean(dim=1))


class ConvHead(nn.Module):
    """conv -> relu -> adaptive pooling to 1x1 -> 1x1 conv as classifier -> flatten (a fully convolutional head)."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.pool = pool
        self.head = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x)))).flatten(1)


class FlatNet(nn.Module):
    """conv -> relu -> flatten -> linear: no global pooling, so CAM does not apply."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def nhwc_layer_model(tmp_path_factory):
    return helpers.export(NHWCHead(), tmp_path_factory.mktemp("nhwc_layer") / "nhwc_layer.onnx")


@pytest.fixture(scope="module")
def token_model(tmp_path_factory):
    return helpers.export(TokenNet(), tmp_path_factory.mktemp("tokens") / "tokens.onnx")


# ---- a whole-model reference: the layer multiplied by an extra input, consumers rewired ---------------
def masked_session(path, layer: str) -> ort.InferenceSession:
    """The full model with `layer` replaced by layer * probe_mask (a new input), and the layer as an output."""
    model = onnx.load(str(path))
    graph = model.graph
    masked = layer + "/probe_masked"
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == layer:
                node.input[k] = masked
    at = next(k for k, n in enumerate(graph.node) if layer in n.output)
    graph.node.insert(at + 1, helper.make_node("Mul", [layer, "probe_mask"], [masked]))
    graph.input.append(helper.make_tensor_value_info("probe_mask", TensorProto.FLOAT, None))
    graph.output.append(helper.make_tensor_value_info(layer, TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_masked(session, x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, layer value) for one image x (1, ...) under each of the masks (M, ...)."""
    feeds = {session.get_inputs()[0].name: np.repeat(x, len(mask), axis=0), "probe_mask": mask.astype(np.float32)}
    scores, layer = session.run(None, feeds)
    return scores.astype(np.float64), layer


def to_chw(value: np.ndarray, layout: str, grid=None) -> np.ndarray:
    """One image's layer value (no batch axis) as (C, h, w), written out by hand."""
    if layout == "NCHW":
        return value
    if layout == "NHWC":
        return value.transpose(2, 0, 1)
    h, w = grid
    return value[-h * w:].T.reshape(-1, h, w)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- every method ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_method_peaks_in_region_for_each_class(method, region_model):
    """Tolerance: none; the argmax of the upsampled map lies in REGION for classes 0, 1 and 2."""
    result = explainer(region_model).explain(list(helpers.region_class_images()), method=method, target=[0, 1, 2])
    for c, attribution in enumerate(result):
        assert attribution.target["index"] == c
        assert attribution.raw.shape == (16, 16) and np.isfinite(attribution.raw).all()
        assert attribution.upsampled.max() > 0, f"{method} class {c}: empty map"
        assert helpers.in_region(helpers.peak(attribution.upsampled)), (method, c, helpers.peak(attribution.upsampled))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_nhwc_input_and_matches_nchw(method, region_model, nhwc_model):
    """The NHWC model is RegionNet behind a transpose: same maps (relative 1e-5), peaks in REGION."""
    images = list(helpers.region_class_images())
    nchw = explainer(region_model).explain(images, method=method, target=[0, 1, 2])
    nhwc = explainer(nhwc_model).explain(images, method=method, target=[0, 1, 2])
    for a, b in zip(nhwc, nchw):
        assert rel_err(a.raw, b.raw) < 1e-5
        assert helpers.in_region(helpers.peak(a.upsampled))


@pytest.mark.parametrize("method", ["score-cam", "ablation-cam", "recipro-cam", "eigen-cam"])
def test_methods_run_on_nhwc_and_token_layers(method, nhwc_layer_model, token_model):
    """Layers in NHWC and (N, 1+h*w, C) token layout give finite maps at the layer's grid."""
    images = helpers.random_images(2)
    for path, grid in ((nhwc_layer_model, (16, 16)), (token_model, (4, 4))):
        result = explainer(path).explain(images, method=method, target=1)
        assert [a.raw.shape for a in result] == [grid, grid]
        assert all(np.isfinite(a.raw).all() and a.upsampled.shape == (32, 32) for a in result)


# ---- CAM -------------------------------------------------------------------------------------------
def test_cam_equals_weighted_sum_of_torch_weights(region_model):
    """CAM (relu off) == sum_k fc.weight[c, k] * A_k from the torch model (relative 1e-5), and with a mean
    pooling head its mean plus the bias is the logit (relative 1e-5)."""
    images = list(helpers.region_class_images())
    ex = explainer(region_model)
    result = ex.explain(images, method="cam", target=[0, 1, 2], relu=False)
    net = helpers.RegionNet().eval()
    x = torch.tensor(ex.prepare(images).x)
    with torch.no_grad():
        acts = torch.relu(net.conv2(torch.relu(net.conv1(x)))) * net.mask
        logits = net(x).numpy()
    for c, attribution in enumerate(result):
        expected = torch.einsum("k,khw->hw", net.fc.weight[c], acts[c]).detach().numpy()
        assert rel_err(attribution.raw, expected) < 1e-5
        bias = net.fc.bias[c].item()
        assert abs(attribution.raw.mean() + bias - logits[c, c]) < 1e-5 * abs(logits[c, c])
        assert attribution.extras["head"] == "ReduceMean -> Gemm"
    relu = ex.explain(images, method="cam", target=[0, 1, 2])
    assert all(np.array_equal(r.raw, np.maximum(a.raw, 0)) for r, a in zip(relu, result))


@pytest.mark.parametrize("relu_first,layout", [(False, "NHWC"), (True, "NCHW")])
def test_cam_reads_nhwc_reduce_mean_and_matmul_head(relu_first, layout, tmp_path):
    """ReduceMean over axes (1, 2) of an NHWC layer (or of an NCHW layer behind a Transpose), then MatMul + Add:
    CAM == sum_k w[k, c] A_k (relative 1e-5)."""
    net = NHWCHead(relu_first).eval()
    ex = explainer(helpers.export(net, tmp_path / "nhwc_head.onnx"))
    assert ex.model.tensors[ex.model.auto_layer()[0]].layout == layout
    images = helpers.random_images(2)
    result = ex.explain(images, method="cam", target=2, relu=False)
    with torch.no_grad():
        acts = torch.relu(net.conv(torch.tensor(ex.prepare(images).x)))  # (N, C, h, w)
        for i, attribution in enumerate(result):
            expected = torch.einsum("k,khw->hw", net.w[:, 2], acts[i]).numpy()
            assert rel_err(attribution.raw, expected) < 1e-5
            assert attribution.extras["head"] == "ReduceMean -> MatMul"


@pytest.mark.parametrize("pool,head", [(nn.AdaptiveAvgPool2d(1), "GlobalAveragePool -> Conv"),
                                       (nn.AdaptiveMaxPool2d(1), "MaxPool -> Conv")])
def test_cam_reads_pooling_then_1x1_conv_head(pool, head, tmp_path):
    """Global average pooling, or a max pool as large as the map (how the legacy exporter writes adaptive max
    pooling), then a 1x1 Conv classifier: CAM == sum_k weight[c, k] A_k (relative 1e-5)."""
    net = ConvHead(pool).eval()
    ex = explainer(helpers.export(net, tmp_path / "convhead.onnx"))
    images = helpers.random_images(1)
    [attribution] = ex.explain(images, method="cam", target=3, relu=False)
    assert attribution.extras["head"] == head
    with torch.no_grad():
        acts = torch.relu(net.conv(torch.tensor(ex.prepare(images).x)))[0]
        expected = torch.einsum("k,khw->hw", net.head.weight[3, :, 0, 0], acts).numpy()
    assert rel_err(attribution.raw, expected) < 1e-5


def test_cam_error_names_what_follows_the_layer(tmp_path, region_model):
    """No global pooling after the layer: the message names the ops found and the methods to use instead."""
    path = helpers.export(FlatNet(), tmp_path / "flat.onnx")
    with pytest.raises(MethodError, match=r"found Flatten -> Gemm; use grad-cam or score-cam instead"):
        explainer(path).explain(helpers.random_images(1), method="cam")
    ex = explainer(region_model)
    before_mask = next(t.name for t in ex.model.layers if t.op_type == "Relu" and "Relu_1" in t.name)
    with pytest.raises(MethodError, match=r"found Mul -> ReduceMean -> Gemm;"):
        ex.explain(helpers.random_images(1), method="cam", layer=before_mask)


# ---- Score-CAM -------------------------------------------------------------------------------------
def score_cam_reference(path, layer: str, x: np.ndarray, classes, keep: int | None = None) -> list[np.ndarray]:
    """A plain loop: one whole-model run per image and channel; torch's aligned-corner bilinear upsampling."""
    session = masked_session(path, layer)
    maps = []
    for i, c in enumerate(classes):
        _, acts = run_masked(session, x[i:i + 1], np.ones((1, 1, 1, 1)))
        acts = acts[0].astype(np.float64)
        channels = np.arange(len(acts)) if keep is None else np.sort(np.argsort(-acts.mean(axis=(1, 2)))[:keep])
        scores = []
        for k in channels:
            up = torch.nn.functional.interpolate(torch.tensor(acts[k])[None, None], size=x.shape[2:],
                                                 mode="bilinear", align_corners=True)[0, 0].numpy()
            mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
            masked = (x[i:i + 1] * mask.astype(np.float32)).astype(np.float32)
            scores.append(run_masked(session, masked, np.ones((1, 1, 1, 1)))[0][0, c])
        weights = softmax(np.array(scores))
        maps.append(np.maximum(np.einsum("k,khw->hw", weights, acts[channels]), 0))
    return maps


@pytest.mark.parametrize("keep", [None, 3])
def test_score_cam_equals_reference_loop(keep, region_model):
    """Batched Score-CAM == an unbatched reference loop (relative 1e-5), with all channels and the top 3."""
    ex = explainer(region_model)
    images = list(helpers.region_class_images())
    layer = ex.model.auto_layer()[0]
    result = ex.explain(images, method="score-cam", target=[0, 1, 2], channels=keep)
    expected = score_cam_reference(region_model, layer, ex.prepare(images).x, [0, 1, 2], keep)
    for attribution, reference in zip(result, expected):
        assert rel_err(attribution.raw, reference) < 1e-5
        assert attribution.extras["channels"] == (keep or 8)


@pytest.fixture(scope="module")
def repeated_channels_model(tmp_path_factory):
    """RegionNet whose 8 layer channels make 6 distinct Score-CAM masks: channel 2 is dead (all zero),
    4 and 5 are constants times the region mask, 7 is twice 6."""
    net = helpers.RegionNet()
    with torch.no_grad():
        w, b = net.conv2.weight, net.conv2.bias
        w[[2, 4, 5]] = 0
        b[2], b[4], b[5] = -1.0, 0.7, 0.3
        w[7], b[7] = 2 * w[6], 2 * b[6]
    return helpers.export(net, tmp_path_factory.mktemp("repeated") / "repeated.onnx")


def test_channels_with_the_same_mask_share_one_forward(repeated_channels_model):
    """Score-CAM runs 6 forwards for 8 channels (5 on the first image, where channel 0 is dead too) and still
    equals the one-forward-per-channel reference loop (relative 1e-5); Ablation-CAM skips dead channels (7 tail
    forwards, 6 on the first image) and still equals zeroing every channel in the whole model (relative 1e-5)."""
    ex = explainer(repeated_channels_model)
    images = list(helpers.region_class_images())
    layer = ex.model.auto_layer()[0]
    x = ex.prepare(images).x
    result = ex.explain(images, method="score-cam", target=[0, 1, 2])
    references = score_cam_reference(repeated_channels_model, layer, x, [0, 1, 2])
    for attribution, reference, forwards in zip(result, references, [5, 6, 6]):
        assert attribution.extras["channels"] == 8 and attribution.extras["forwards"] == forwards
        assert rel_err(attribution.raw, reference) < 1e-5
    session = masked_session(repeated_channels_model, layer)
    for i, attribution in enumerate(ex.explain(images, method="ablation-cam", target=1, relu=False)):
        assert attribution.extras["forwards"] == [6, 7, 7][i]
        full, acts = run_masked(session, x[i:i + 1], np.ones((1, 1, 1, 1)))
        ablated, _ = run_masked(session, x[i:i + 1], channel_masks(8, "NCHW"))
        weights = (full[0, 1] - ablated[:, 1]) / full[0, 1]
        assert rel_err(attribution.raw, np.einsum("k,khw->hw", weights, acts[0].astype(np.float64))) < 1e-5


def test_distinct_masks_groups_channels_by_normalised_map():
    """Known answer: zero and constant channels share the zero mask, an affine copy shares its source's."""
    a = np.arange(4.0).reshape(2, 2)
    b = np.array([[3.0, 0.0], [1.0, 2.0]])
    maps = np.stack([np.zeros((2, 2)), a, np.full((2, 2), 5.0), 3 * a + 1, b, b])
    first, shared = distinct_masks(maps)
    assert first.tolist() == [0, 1, 4]
    assert shared.tolist() == [0, 1, 0, 1, 2, 2]


class WideNet(nn.Module):
    """conv 3 -> `channels` (2x2, stride 2) -> relu -> mean -> linear to 4 classes: a layer of many channels
    at half the input's resolution."""

    def __init__(self, channels: int):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, channels, 2, stride=2)
        self.fc = nn.Linear(channels, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def score_cam_peak(path, images) -> tuple[int, list[np.ndarray]]:
    """(tracemalloc peak bytes of one Score-CAM call on every class, its maps) after a warm-up call."""
    ex = explainer(path)
    ex.explain(images, method="score-cam", target="all")
    tracemalloc.start()
    try:
        maps = [a.raw for a in ex.explain(images, method="score-cam", target="all")]
        return tracemalloc.get_traced_memory()[1], maps
    finally:
        tracemalloc.stop()


def test_score_cam_memory_does_not_grow_with_the_channels(tmp_path, monkeypatch):
    """From 64 to 256 channels of a 64x64 layer (128x128 input; both fill the 32-image batches of masks)
    Score-CAM's peak grows by under twice the extra channels' float32 activations (the forward's own output);
    normalising and summing all channels at once in float64 grew it by about 15 times. Blocks of 256 KiB (eight channels) give the maps of one
    block (within 1e-6)."""
    images = helpers.random_images(1, size=128)
    monkeypatch.setattr(scorecam, "CHANNEL_BYTES", 1 << 18, raising=False)
    peaks = {}
    for channels in (64, 256):
        path = helpers.export(WideNet(channels), tmp_path / f"wide{channels}.onnx", shape=(1, 3, 128, 128))
        peaks[channels], maps = score_cam_peak(path, images)
    extra_activations = (256 - 64) * 64 * 64 * 4
    assert peaks[256] - peaks[64] < 2 * extra_activations, (peaks, extra_activations)
    monkeypatch.setattr(scorecam, "CHANNEL_BYTES", 1 << 40, raising=False)
    one_block = [a.raw for a in explainer(path).explain(images, method="score-cam", target="all")]
    assert len(maps) == len(one_block) == 4
    for blocks, whole in zip(maps, one_block):
        assert rel_err(blocks, whole) < 1e-6


def test_score_cam_blur_baseline_and_bad_params(region_model):
    """Baseline 'blur' still peaks in REGION; unknown baselines and bad channel counts name the parameter."""
    ex = explainer(region_model)
    result = ex.explain(list(helpers.region_class_images()), method="score-cam", target=[0, 1, 2], baseline="blur")
    assert all(helpers.in_region(helpers.peak(a.upsampled)) for a in result)
    with pytest.raises(MethodError, match="'baseline'.*zero, blur"):
        ex.explain(helpers.random_images(1), method="score-cam", baseline="noise")
    with pytest.raises(MethodError, match="'channels'"):
        ex.explain(helpers.random_images(1), method="score-cam", channels="0")


# ---- Ablation-CAM ----------------------------------------------------------------------------------
def channel_masks(channels: int, layout: str) -> np.ndarray:
    """(C, ...) masks zeroing one channel each, shaped to broadcast against the layer in its layout."""
    masks = 1 - np.eye(channels)
    return {"NCHW": masks[:, :, None, None], "NHWC": masks[:, None, None, :], "tokens": masks[:, None, :]}[layout]


def acts_rank(info) -> int:
    return 3 if info.layout == "tokens" else 4


@pytest.mark.parametrize("fixture", ["region_model", "nhwc_layer_model", "token_model"])
def test_ablation_tail_equals_whole_model(fixture, request):
    """Ablation-CAM through the tail == the same weights computed by zeroing channels in the whole model
    (a Mul node on the layer), relative 1e-5, for NCHW, NHWC and token layers."""
    path = request.getfixturevalue(fixture)
    ex = explainer(path)
    images = helpers.random_images(2)
    result = ex.explain(images, method="ablation-cam", target=1, relu=False)
    layer = result[0].layer
    info = ex.model.tensors[layer]
    session = masked_session(path, layer)
    x = ex.prepare(images).x
    for i, attribution in enumerate(result):
        full, acts = run_masked(session, x[i:i + 1], np.ones((1,) * acts_rank(info)))
        channels = info.channels if info.layout != "tokens" else info.shape[-1]
        ablated, _ = run_masked(session, x[i:i + 1], channel_masks(channels, info.layout))
        y = full[0, 1]
        weights = (y - ablated[:, 1]) / y
        expected = np.einsum("k,khw->hw", weights, to_chw(acts[0].astype(np.float64), info.layout, info.grid))
        assert rel_err(attribution.raw, expected) < 1e-5


# ---- Recipro-CAM -----------------------------------------------------------------------------------
def recipro_masks(h: int, w: int, layout: str, tokens: int = 0) -> np.ndarray:
    """Per position, the 3x3 kernel (1/4 centre, 1/8 edges, 1/16 corners) cut at the borders, by plain loops."""
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    masks = np.zeros((h * w, h, w))
    for i in range(h):
        for j in range(w):
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if 0 <= i + di < h and 0 <= j + dj < w:
                        masks[i * w + j, i + di, j + dj] = kernel[di + 1, dj + 1]
    if layout == "NCHW":
        return masks[:, None]
    if layout == "NHWC":
        return masks[..., None]
    flat = masks.reshape(h * w, h * w, 1)
    return np.concatenate([np.ones((h * w, tokens - h * w, 1)), flat], axis=1)  # class token kept


@pytest.mark.parametrize("fixture", ["nhwc_model", "nhwc_layer_model", "token_model"])
def test_recipro_cam_equals_whole_model_loop(fixture, request):
    """Recipro-CAM through the tail == softmax probability of the whole model with the layer masked around
    each position (relative 1e-5): NHWC input, NHWC layer, token layer with its class token kept."""
    path = request.getfixturevalue(fixture)
    ex = explainer(path)
    images = list(helpers.region_class_images())
    result = ex.explain(images, method="recipro-cam", target=[0, 1, 2])
    info = ex.model.tensors[result[0].layer]
    h, w = info.hw
    session = masked_session(path, info.name)
    x = ex.prepare(images).x
    masks = recipro_masks(h, w, info.layout, info.shape[1] if info.layout == "tokens" else 0)
    for c, attribution in enumerate(result):
        scores, _ = run_masked(session, x[c:c + 1], masks)
        assert rel_err(attribution.raw, softmax(scores)[:, c].reshape(h, w)) < 1e-5
    binary = ex.explain(images, method="recipro-cam", target=[0, 1, 2], mask="binary", softmax=False)
    assert all(a.raw.shape == (h, w) and np.isfinite(a.raw).all() for a in binary)


@pytest.mark.parametrize("kind", ["gaussian", "binary"])
def test_recipro_sparse_masks_equal_the_broadcast_product(kind):
    """The NCHW fast path writes only each mask's non-zero columns into a reused buffer: every chunk equals
    acts * M_k exactly, across chunks and calls, and the buffer it keeps for the next call is all zeros."""
    from onnxplain.methods import recipro
    acts = np.random.default_rng(0).standard_normal((6, 3, 4)).astype(np.float32)
    masks = recipro.position_masks(3, 4, kind).astype(np.float32)
    expected = acts[None] * masks[:, None]
    for _ in range(2):  # the second call reuses the kept buffer
        make = recipro.SparseMasked(acts, masks, 5)
        got = np.concatenate([make(slice(a, min(a + 5, 12))).copy() for a in range(0, 12, 5)])
        np.testing.assert_array_equal(got, expected)
        make.release()
        assert recipro._kept.buffer is make.buffer and not make.buffer.any()


# ---- EfficientNet-Lite0: pointing game -------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet_batch(effnet):
    ex = Explainer(effnet, device="cpu", quiet=True)
    return ex, ex.prepare([data.chelsea()])


@pytest.mark.parametrize("method,params", [("cam", {}), ("score-cam", {"channels": 64}), ("ablation-cam", {}),
                                           ("recipro-cam", {}), ("eigen-cam", {})])
def test_effnet_peak_on_cat_face(method, params, effnet_batch):
    """Pointing game: the upsampled map's argmax lies in FACE_BOX (tolerance: none) for the predicted class."""
    ex, batch = effnet_batch
    attribution = ex.explain(batch, method=method, **params)[0]
    assert attribution.target["index"] == 282  # tiger cat
    row, col = helpers.peak(attribution.upsampled)
    x1, y1, x2, y2 = FACE_BOX
    assert x1 <= col <= x2 and y1 <= row <= y2, (method, row, col)


def test_effnet_cam_mean_plus_bias_is_the_logit(effnet_batch):
    """Legacy export with a Shape -> Gather -> Concat side branch before Reshape -> Gemm: the head is found,
    and mean(CAM) + bias equals the logit (relative 1e-4, float32 sums over 1280 channels)."""
    ex, batch = effnet_batch
    attribution = ex.explain(batch, method="cam", relu=False)[0]
    assert attribution.extras["head"] == "GlobalAveragePool -> Gemm"
    logit = float(attribution.scores[282])
    bias = float(ex.model.weights["_fc.bias"][282])
    assert abs(attribution.raw.mean() + bias - logit) < 1e-4 * abs(logit)
