"""Synthesis through the converted module: activation maximisation, class visualisation, DeepDream,
inversion, fooling images, texture and style, on a tiny exported net and on EfficientNet-Lite0.

Every check that the model sees something is made again on onnxruntime with the returned uint8 image.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from torch import nn

import helpers
import onnxplain
import real_models
from onnxplain.images import denormalise, normalise
from onnxplain.synthesis import (class_vis, dream, fool, gram, input_batch, invert, maximize, maximize_grid, style,
                                 texture)
from onnxplain.synthesis import regularisers
from onnxplain.synthesis.common import SynthesisError
from onnxplain.cli.synth import synth

RELU1, RELU2 = "/relu1/Relu_output_0", "/relu2/Relu_output_0"
QUICK = dict(steps=30, jitter=0, blur_every=0)   # a bare ascent, the baseline the regularisers are compared with


class TinyNet(nn.Module):
    """conv(3->8) -> relu -> conv(8->16, stride 2) -> relu -> GAP -> linear(16 -> 5), seeded weights."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return helpers.export(TinyNet(), tmp_path_factory.mktemp("synth") / "tiny.onnx")


@pytest.fixture(scope="module")
def explainer(tiny):
    return onnxplain.load(tiny, preprocess="imagenet", quiet=True, device="cpu")


@pytest.fixture(scope="module")
def photo():
    return helpers.random_images(1, 32, seed=3)[0]


def ort_layer(explainer, image: np.ndarray, layer: str) -> np.ndarray:
    """The layer's value on onnxruntime for exactly this uint8 model-input image."""
    return explainer.run(input_batch(explainer, image).x, [layer])[layer]


def laplacian_energy(image: np.ndarray) -> float:
    """Mean squared Laplacian of the gray image: the high-frequency energy."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.mean(cv2.Laplacian(gray, cv2.CV_32F) ** 2))


# ---- maximize --------------------------------------------------------------------------------
def test_channel_objective_rises_tenfold(explainer):
    """Channel 3 of relu2 starts positive on the seeded noise and ends >= 10x higher (~36x measured);
    onnxruntime agrees with the final value on the uint8 image (rounding: 5% relative)."""
    result = maximize(explainer, layer=RELU2, channel=3, **QUICK)
    assert result.image.shape == (32, 32, 3) and result.image.dtype == np.uint8
    assert len(result.history) == 31 and result.history[0] > 0
    assert result.history[-1] >= 10 * result.history[0]
    ort = ort_layer(explainer, result.image, RELU2)[0, 3].mean()
    assert ort == pytest.approx(result.history[-1], rel=0.05)


def test_neuron_and_class_objectives_rise(explainer):
    """A neuron (centre of relu2) and a class logit both rise; onnxruntime gives the final logit on the uint8
    image (0.02 absolute: rounding to uint8)."""
    neuron = maximize(explainer, layer=RELU2, channel=8, position="centre", **QUICK)
    assert neuron.details["objective"]["position"] == [8, 8]
    assert neuron.history[-1] > neuron.history[0] + 0.1
    scored = maximize(explainer, target=2, **QUICK)
    assert scored.history[-1] > scored.history[0] + 0.2
    top = explainer.predict(input_batch(explainer, scored.image), top=5)[0].top
    assert next(score for i, _, score, _ in top if i == 2) == pytest.approx(scored.history[-1], abs=0.02)


@pytest.mark.parametrize("regulariser", [dict(blur_every=1, blur_sigma=1.0),
                                         dict(bilateral_every=1, bilateral_sigma_color=60, bilateral_sigma_space=3)])
def test_blurs_lower_high_frequency_energy(explainer, regulariser):
    """Same seed, same steps: blurring every step leaves far less Laplacian energy than the bare ascent
    (< 0.5x asserted, ~1e-4x measured) while the objective still rises."""
    bare = maximize(explainer, layer=RELU2, channel=3, **QUICK)
    blurred = maximize(explainer, layer=RELU2, channel=3, **{**QUICK, **regulariser})
    assert laplacian_energy(blurred.image) < 0.5 * laplacian_energy(bare.image)
    assert blurred.history[-1] > 2 * blurred.history[0]


def test_seed_makes_it_deterministic(explainer):
    """Same seed: identical image and history (jitter and noise included); another seed: another image."""
    params = dict(steps=10, jitter=2, blur_every=2, norm_pct=10, contrib_pct=10)
    first, again = (maximize(explainer, layer=RELU2, channel=3, seed=5, **params) for _ in range(2))
    other = maximize(explainer, layer=RELU2, channel=3, seed=6, **params)
    assert np.array_equal(first.image, again.image) and first.history == again.history
    assert not np.array_equal(first.image, other.image)


def test_octaves_end_at_full_size(explainer):
    """Two octaves: steps at 23x23 then 32x32, one history entry per step plus the final one."""
    result = maximize(explainer, layer=RELU2, channel=3, steps=5, octaves=2, jitter=0)
    assert result.image.shape == (32, 32, 3) and len(result.history) == 11


def test_percentile_clipping_sets_the_lowest_pixels_to_grey():
    """Norm clipping at 50% greys exactly half the pixels of a batch; contribution clipping uses |sum u*grad|."""
    u = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    clipped = regularisers.clip_small_norm(u, 50)
    grey = (clipped == 0).all(1).flatten(1).float().mean(1)
    assert torch.equal(grey, torch.tensor([0.5, 0.5]))
    grad = torch.zeros_like(u)
    grad[:, :, :4] = 1.0     # only the top half contributes
    kept = regularisers.clip_small_contribution(u, grad, 50)
    assert (kept[:, :, 4:] == 0).all() and torch.equal(kept[:, :, :4], u[:, :, :4])


def test_grid_renders_one_image_per_channel_independent_of_batching(explainer):
    """Four channels in one batch equal two batches of two (rows never mix); the grid holds four tiles."""
    together = maximize_grid(explainer, RELU2, [0, 3, 8, 9], batch_size=4, steps=10, tile=32)
    split = maximize_grid(explainer, RELU2, [0, 3, 8, 9], batch_size=2, steps=10, tile=32)
    assert len(together.tiles) == 4 and together.image.shape[0] > 64 and together.image.shape[1] > 64
    for a, b in zip(together.tiles, split.tiles):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert together.details["channels"] == [0, 3, 8, 9] and len(together.details["final"]) == 4


def test_class_vis_is_simonyan(explainer):
    """The penalised class score S_c - lam ||u||^2 rises (from the grey image); with lam = 0 it is maximize on
    the class logit from the same grey start, without regularisers."""
    result = class_vis(explainer, 2, steps=30)
    assert result.history[-1] > result.history[0] + 0.2 and result.details["score"] > result.history[-1]
    plain = class_vis(explainer, 1, steps=10, lam=0.0)
    same = maximize(explainer, target=1, steps=10, init_std=0.0, l2_decay=0.0, blur_every=0, jitter=0)
    assert np.array_equal(plain.image, same.image)


# ---- dream, invert ---------------------------------------------------------------------------
def test_dream_changes_the_photo_and_raises_the_layer_norm(explainer, photo):
    """0.5 mean(A^2) of relu2 is higher on the dreamed uint8 image than on the photo (onnxruntime; > 1.2x
    asserted, ~1.7x measured)."""
    result = dream(explainer, photo, RELU2, steps=5, octaves=2, jitter=2)
    original = denormalise(explainer.prepare(photo).x[0], explainer.preprocess)
    assert np.abs(result.image.astype(int) - original.astype(int)).mean() > 1
    before = 0.5 * np.mean(ort_layer(explainer, original, RELU2) ** 2)
    after = 0.5 * np.mean(ort_layer(explainer, result.image, RELU2) ** 2)
    assert after > 1.2 * before
    assert result.history[0] == pytest.approx(before, rel=1e-3)


def test_inversion_lowers_the_feature_distance(explainer, photo):
    """From noise, the relu1 features of the result are much closer to the photo's (onnxruntime: < 0.5x the start
    asserted, 0.82 -> 0.03 measured); torch and onnxruntime agree on the uint8 result within 0.02."""
    result = invert(explainer, photo, RELU1, steps=60)
    original = denormalise(explainer.prepare(photo).x[0], explainer.preprocess)
    reference = ort_layer(explainer, original, RELU1)
    distance = np.sum((ort_layer(explainer, result.image, RELU1) - reference) ** 2) / np.sum(reference ** 2)
    assert result.details["feature_distance"] < 0.5 * result.details["feature_distance_start"]
    assert distance < 0.5 * result.details["feature_distance_start"]
    assert distance == pytest.approx(result.details["feature_distance"], abs=0.02)


# ---- fool ------------------------------------------------------------------------------------
def test_fool_reaches_the_target_within_budget(explainer, photo):
    """Targeted PGD to the runner-up class (16 steps measured): onnxruntime calls the uint8 result the target,
    and it differs from the model-input original by at most the budget (in whole pixels)."""
    scores = explainer.predict(photo, top=5)[0].top
    target = scores[1][0]
    result = fool(explainer, photo, target, eps=32 / 255, alpha=2 / 255, steps=40)
    assert result.success and result.predicted == target
    original = denormalise(explainer.prepare(photo).x[0], explainer.preprocess)
    assert np.array_equal(result.original, original)
    linf = np.abs(result.image.astype(int) - original.astype(int)).max()
    assert linf == result.linf <= 32
    top = explainer.predict(input_batch(explainer, result.image), top=1)[0].top[0]
    assert top[0] == target and top[3] == pytest.approx(result.confidence, abs=1e-5)
    assert result.steps < 40 and len(result.history) == result.steps + 1


def test_fool_names_classes_and_refuses_a_sub_pixel_budget(explainer, photo):
    with pytest.raises(onnxplain.UserError, match="one pixel"):
        fool(explainer, photo, 1, eps=0.5 / 255)
    with pytest.raises(onnxplain.UserError, match="not a class index"):
        fool(explainer, photo, "goldfish")
    with pytest.raises(onnxplain.UserError, match="out of range"):
        fool(explainer, photo, 7)


# ---- texture, style --------------------------------------------------------------------------
def test_gram_matches_numpy():
    """gram(F) = F F^T / (h w) per image, against numpy (float32, 1e-5 relative)."""
    features = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    flat = features.numpy().reshape(2, 4, 15)
    expected = np.einsum("nik,njk->nij", flat, flat) / 15
    np.testing.assert_allclose(gram(features).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_texture_and_style_lower_their_losses(explainer, photo):
    """The losses fall: L-BFGS texture < 0.3x its start (~0.002x measured), Adam style < 0.8x (~0.06x)."""
    made = texture(explainer, photo, [RELU1, RELU2], steps=15)
    assert made.details["layers"] == [RELU1, RELU2] and made.history[-1] < 0.3 * made.history[0]
    other = helpers.random_images(1, 32, seed=9)[0]
    styled = style(explainer, photo, other, content_layer=RELU2, style_layers=[RELU1], steps=15, optimizer="adam",
                   init="content")
    assert styled.history[-1] < 0.8 * styled.history[0]


def test_texture_at_a_size_larger_than_the_model_input(explainer, photo):
    """A 48x80 texture from the 32x32 model: the model runs on the whole canvas, the loss falls below 0.3x
    its start, and a size the model cannot run at (0 rows) is refused."""
    made = texture(explainer, photo, [RELU1, RELU2], steps=10, size=(48, 80))
    assert made.image.shape == (48, 80, 3) and made.history[-1] < 0.3 * made.history[0]
    with pytest.raises(SynthesisError, match="texture size must be positive"):
        texture(explainer, photo, size=(0, 8))


def test_style_stylises_at_its_defaults_on_efficientnet():
    """EfficientNet-Lite0, chelsea painted as skimage's immunohistochemistry slide, defaults but 10 L-BFGS
    iterations: the result's Gram matrices (Gatys's style layers, relative distance) are closer to the
    style image's than the photo's are (0.123 -> 0.077 measured), and its content features (conv4_2 analogue)
    are closer to the photo's than the noise start's are (0.60 -> 0.22)."""
    from onnxplain.synthesis.common import Space, feature_layers
    from onnxplain.synthesis.style_transfer import _maps, _relative, gatys_content_layer

    explainer = onnxplain.load(real_models.EFFICIENTNET_LITE0, device="cpu", quiet=True)
    photo, art = skimage.data.chelsea(), skimage.data.immunohistochemistry()
    result = style(explainer, photo, art, steps=10)
    names, content = feature_layers(explainer, pick="first"), gatys_content_layer(explainer)
    assert result.details["style_layers"] == names and result.details["content_layer"] == content
    assert result.params["init"] == "auto" and result.params["style_weight"] == 1e3
    space = Space.of(explainer)
    photo_u, art_u, made_u = (space.from_photo(explainer, image)[0] for image in (photo, art, result.image))
    noise_u = space.noise(1, 0.1, 0)
    with torch.no_grad():
        styles = {n: gram(v) for n, v in _maps(explainer, space, art_u, names).items()}
        target = _maps(explainer, space, photo_u, [content])[content]

        def distances(u):
            maps = _maps(explainer, space, u, names + [content])
            return (float(sum(_relative(gram(maps[n]), styles[n]) for n in names)) / len(names),
                    float(_relative(maps[content], target)))

        (photo_style, _), (made_style, made_content), (_, noise_content) = map(distances, (photo_u, made_u, noise_u))
    assert made_style < 0.9 * photo_style, (made_style, photo_style)
    assert made_content < 0.5 * noise_content, (made_content, noise_content)


def test_default_feature_layers_take_one_per_resolution(explainer, photo):
    made = texture(explainer, photo, steps=2)
    assert made.details["layers"] == [RELU1, RELU2]


# ---- results and CLI -------------------------------------------------------------------------
def test_save_writes_png_and_json(explainer, tmp_path):
    result = maximize(explainer, layer=RELU2, channel=3, steps=3)
    files = result.save(tmp_path / "out" / "max")
    saved = cv2.cvtColor(cv2.imread(files["image"]), cv2.COLOR_BGR2RGB)
    assert np.array_equal(saved, result.image)
    manifest = json.loads((tmp_path / "out" / "max.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["history"] == result.history
    assert manifest["params"]["steps"] == 3 and manifest["details"]["objective"]["channel"] == 3


def test_bad_arguments_say_what_to_do(explainer):
    with pytest.raises(onnxplain.UserError, match="out of range"):
        maximize(explainer, layer=RELU2, channel=99)
    with pytest.raises(onnxplain.UserError, match="no tensor named"):
        maximize(explainer, layer="nope", channel=0)
    with pytest.raises(onnxplain.UserError, match="Unknown parameter 'stepz'"):
        maximize(explainer, layer=RELU2, channel=0, stepz=3)
    with pytest.raises(onnxplain.UserError, match="'lr' must be greater than 0"):
        maximize(explainer, layer=RELU2, channel=0, lr=0)


@pytest.mark.parametrize("command", [[], ["maximize"], ["grid"], ["class-vis"], ["dream"], ["invert"], ["fool"],
                                     ["texture"], ["style"]])
def test_cli_help(command):
    result = CliRunner().invoke(synth, command + ["--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_cli_runs_and_writes_files(tiny, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(synth, ["maximize", str(tiny), "-l", RELU2, "-c", "3", "--steps", "5",
                                        "--preset", "imagenet", "-p", "jitter=1", "-p", "blur_sigma=0.7",
                                        "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "maximize.c3.json").read_text())
    assert (out / "maximize.c3.png").is_file() and manifest["params"]["jitter"] == 1
    assert manifest["params"]["blur_sigma"] == 0.7 and len(manifest["history"]) == 6


def test_cli_bad_layer_exits_2_with_one_sentence(tiny, tmp_path):
    result = CliRunner().invoke(synth, ["maximize", str(tiny), "-l", "/relu9/Relu_output_0", "-c", "0",
                                        "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: The model has no tensor named") and "Traceback" not in \
        result.output


# ---- EfficientNet-Lite0 ----------------------------------------------------------------------
def test_effnet_fool_turns_chelsea_into_a_goldfish(effnet):
    """The cat becomes class 1 ('goldfish') within 8/255 (4-6 steps measured at 1/255 per step), verified on
    onnxruntime with the returned 224x224 uint8 image."""
    chelsea = pytest.importorskip("skimage.data").chelsea()
    explainer = onnxplain.load(effnet, quiet=True, device="cpu")
    assert explainer.predict(chelsea, top=1)[0].top[0][1].endswith("cat")
    result = fool(explainer, chelsea, "goldfish", steps=12)
    assert result.success and result.target == 1 and result.image.shape == (224, 224, 3)
    original = denormalise(explainer.prepare(chelsea).x[0], explainer.preprocess)
    assert np.abs(result.image.astype(int) - original.astype(int)).max() <= 8
    top = explainer.predict(input_batch(explainer, result.image), top=1)[0].top[0]
    assert top[0] == 1 and top[1] == "goldfish"
    x = normalise(result.image, explainer.preprocess).transpose(2, 0, 1)[None]
    assert int(np.argmax(explainer.run(np.ascontiguousarray(x))["logits"])) == 1   # the session itself
