"""Interpretable CNN: templates, the mask, ONNX parity, the filter loss, and the shipped face models."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import onnxplain
from models import train_interpretable as recipe
from onnxplain import interpretable as icnn
from onnxplain.cli.features import features
from onnxplain.features import peaks as fpeaks
from real_models import ROOT

MODELS = ROOT / "models"


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: several times faster for these tiny nets on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def report() -> dict:
    """The numbers models/train_interpretable.py measured when it built the shipped models."""
    return json.loads((MODELS / "interpretable_faces.json").read_text())


@pytest.fixture(scope="module")
def lfw():
    return recipe.lfw_faces()


@pytest.fixture(scope="module")
def face_folder(lfw, tmp_path_factory):
    """The 100 lfw faces as PNG files (lossless: the same uint8 pixels the recipe measured)."""
    folder = tmp_path_factory.mktemp("faces")
    images, labels = lfw
    for i, image in enumerate(images[labels == 1]):
        cv2.imwrite(str(folder / f"face{i:03d}.png"), image)
    return folder


# ---- templates and mask ----------------------------------------------------------------------
def test_templates_match_hand_computed_values():
    """n = 8, beta = 4: T_mu(i, j) = tau * max(1 - |i - r| / 2 - |j - c| / 2, -1), tau = 0.5 / 64 (exact)."""
    bank = icnn.templates(8)
    tau = 0.5 / 64
    assert bank.shape == (64, 8, 8)
    t = bank[2 * 8 + 3]            # mu = (2, 3)
    assert t[2, 3] == tau           # distance 0
    assert t[2, 4] == t[1, 3] == 0.5 * tau    # distance 1
    assert t[3, 4] == t[0, 3] == 0.0          # distance 2 = n / beta: the template's zero crossing
    assert t[4, 4] == -0.5 * tau              # distance 3
    assert t[7, 7] == t[6, 3] == -tau         # distance >= 4: clamped at -tau
    assert torch.equal(icnn.negative_template(8), torch.full((8, 8), -tau))
    assert torch.equal(icnn.templates(8)[0].T, icnn.templates(8)[0])   # the corner template is symmetric


def test_mask_keeps_only_the_peak_neighbourhood():
    """Output = x * T_peak where the template is positive (L1 distance < n / beta), exactly zero elsewhere."""
    torch.manual_seed(0)
    x = torch.rand(3, 4, 8, 8) + 0.1
    out = icnn.template_mask(x)
    bank = icnn.templates(8)
    for n in range(3):
        for c in range(4):
            peak = int(x[n, c].argmax())
            r, col = divmod(peak, 8)
            dist = (torch.arange(8)[:, None] - r).abs() + (torch.arange(8)[None, :] - col).abs()
            assert torch.all(out[n, c][dist >= 2] == 0)
            assert torch.allclose(out[n, c][dist < 2], (x[n, c] * bank[peak])[dist < 2], atol=0, rtol=1e-6)
            assert int(out[n, c].argmax()) == peak
    module = icnn.InterpretableMask()
    assert torch.equal(module(x), out)


def test_mask_passes_gradient_through_x_only():
    x = torch.rand(1, 1, 4, 4, requires_grad=True)
    icnn.template_mask(x).sum().backward()
    expected = icnn.templates(4)[int(x.detach().argmax())].clamp(min=0)
    assert torch.allclose(x.grad[0, 0], expected * (x.detach()[0, 0] * expected > 0))


# ---- ONNX ------------------------------------------------------------------------------------------
class MaskNet(nn.Module):
    """conv -> relu -> interpretable mask: the masked maps are the output, so parity checks them directly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.mask = icnn.InterpretableMask()

    def forward(self, x):
        return self.mask(self.relu(self.conv(x)))


@pytest.mark.parametrize("net, shape", [(MaskNet(), (3, 10, 10)), (icnn.FaceNet(masked=True, seed=1), (1, 25, 25))],
                         ids=["masked-maps", "facenet"])
def test_exported_onnx_equals_torch(net, shape, tmp_path):
    """Legacy exporter, opset 17, dynamic batch: onnxruntime equals torch within 1e-5 on random inputs."""
    net.eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, torch.zeros(1, *shape), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"], dynamic_axes={"input": {0: "b"}, "out": {0: "b"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "ArgMax" in {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    for batch, seed in ((1, 0), (5, 1)):
        x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed)) * 4
        with torch.no_grad():
            expected = net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        if expected.ndim == 4:
            assert (expected > 0).sum() > 0 and (expected == 0).mean() > 0.5   # the mask really cut


# ---- filter loss -----------------------------------------------------------------------------------
def test_filter_loss_is_minus_a_mutual_information():
    """0 when every map is the same (p(x|T) uniform), negative and above -H(T) otherwise."""
    same = torch.ones(6, 2, 5, 5)
    assert abs(float(icnn.filter_loss(same))) < 1e-6
    torch.manual_seed(0)
    peaked = torch.zeros(6, 2, 5, 5)
    peaked[torch.arange(6), :, torch.arange(6) % 5, torch.arange(6) % 5] = 400.0
    loss = float(icnn.filter_loss(peaked, alpha=0.5))
    prior = np.r_[0.5, np.full(25, 0.5 / 25)]
    assert -float(-(prior * np.log(prior)).sum()) < loss < -0.1


def test_short_training_lowers_the_filter_loss(lfw):
    """Six steps led by the filter loss lower it on a fixed batch (no augmentation) well below where the same
    steps without it leave it; seeded. At initialisation tr(x T) is tiny, so the values are small."""
    images, labels = lfw
    index = np.r_[0:32, 100:132]
    x = torch.from_numpy(images[index]).float()[:, None] / 255

    def trained(lam: float) -> tuple[float, float]:
        net = icnn.FaceNet(masked=True, seed=0)
        with torch.no_grad():
            before = float(icnn.filter_loss(net.eval().top(x), alpha=0.5))
        recipe.train(net, images[index], labels[index], epochs=3, lam=lam, alpha=0.5, seed=0)
        with torch.no_grad():
            return before, float(icnn.filter_loss(net.eval().top(x), alpha=0.5))

    before, with_loss = trained(1e4)
    _, without = trained(0.0)
    assert with_loss < 10 * before < 0 and with_loss < 2 * without


# ---- peak spread ---------------------------------------------------------------------------------------
def test_peak_spread_and_firing_filters_by_hand():
    """Spread = mean distance of positive peaks from their mean / sqrt(h w); weak filters do not fire."""
    positions = np.array([[[0, 0], [1, 1], [3, 3]], [[0, 2], [1, 1], [0, 0]], [[2, 1], [1, 1], [3, 3]]])
    values = np.array([[1.0, 5.0, 0.2], [1.0, 5.0, 0.0], [0.0, 5.0, 0.2]])   # filter 0 silent on image 2
    result = fpeaks.Peaks("layer", ["a", "b", "c"], (4, 4), positions, values, threshold=0.1)
    assert result.spread[0] == pytest.approx(1 / 4)       # (0,0), (0,2): mean (0,1), distances 1 and 1
    assert result.spread[1] == 0.0
    assert not result.fires[2] and np.isnan(result.spread[2])   # mean peak 0.13 < 0.1 * 5
    assert result.mean_spread == pytest.approx(0.125)
    assert result.counts(0).sum() == 2 and result.counts(0)[0, 2] == 1
    assert fpeaks.peak_positions(np.arange(8.0).reshape(1, 2, 2, 2))[0].tolist() == [[[1, 1], [1, 1]]]


# ---- the shipped models --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["interpretable", "ordinary"])
def test_shipped_models_match_their_report(name, lfw, report):
    """Held-out accuracy and the faces' mean spread, recomputed through onnxplain, match the JSON."""
    images, labels = lfw
    entry = report["models"][name]
    explainer = onnxplain.load(MODELS / entry["file"], quiet=True)
    assert explainer.preprocess.scale == pytest.approx(1 / 255) and explainer.spec.channels == 1
    _, test = recipe.train_test_split(labels, report["recipe"]["test_size"], report["recipe"]["seed"])
    scores = explainer.forward(explainer.prepare(list(images[test])))["scores"]
    assert (scores.argmax(1) == labels[test]).mean() == pytest.approx(entry["heldout_accuracy"], abs=0.021)
    result = fpeaks.peaks(explainer, list(images[labels == 1]), report["layer"], report["recipe"]["threshold"])
    assert result.mean_spread == pytest.approx(entry["mean_spread"], abs=1e-4)
    assert int(result.fires.sum()) == entry["firing_filters"]
    assert entry["bytes"] < 300_000


def test_interpretable_model_spreads_less_than_the_ordinary_one(report):
    models = report["models"]
    assert models["interpretable"]["mean_spread"] < models["ordinary"]["mean_spread"]


def test_peaks_command_on_a_folder_of_faces(face_folder, tmp_path, report):
    """`features peaks` on PNG faces: table, mean spread equal to the JSON's, grid PNG and JSON written."""
    model = str(MODELS / report["models"]["interpretable"]["file"])
    out = tmp_path / "out"
    result = CliRunner().invoke(features, ["peaks", model, str(face_folder), "-l", report["layer"],
                                              "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = report["models"]["interpretable"]["mean_spread"]
    assert f"firing filters: {expected:.4f}" in result.output
    grid = cv2.imread(str(out / "peaks.png"))
    assert grid is not None and grid.shape[0] > 48
    saved = json.loads((out / "peaks.json").read_text())
    assert len(saved["images"]) == 100 and saved["mean_spread"] == pytest.approx(expected, abs=1e-4)
    assert len(saved["filters"]) == 32 and len(saved["filters"][0]["peaks"]) == 100


@pytest.mark.parametrize("args, message", [(["-l", "nope"], "no tensor named 'nope'"),
                                           (["--threshold", "2"], "not in [0, 1]")])
def test_peaks_command_user_errors_exit_2(args, message, face_folder, tmp_path, report):
    model = str(MODELS / report["models"]["ordinary"]["file"])
    result = CliRunner().invoke(features, ["peaks", model, str(face_folder), *args, "--out", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_importing_the_module_does_not_import_torch():
    """Importing the paper's layer and loss does not import torch; torch loads only when a torch part is used."""
    import subprocess
    import sys
    code = "import sys, onnxplain.interpretable; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
