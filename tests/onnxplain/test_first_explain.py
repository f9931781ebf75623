"""The first explain with the auto layer runs the model on the full input once: the graph's guess for the layer
is exposed in the forward that resolves the target, so the probe and the method read it from the batch's cache
instead of running the model again (the probe's and the method's tail runs feed the layer, not the image)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from onnxplain import Explainer
from test_task import _export
from zoo import zoo_exports  # noqa: F401  (the session fixture)


@pytest.fixture
def runs(monkeypatch):
    """Every onnxruntime session run during the test, as (input names fed, outputs asked for)."""
    seen: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    original = ort.InferenceSession.run

    def counted(self, outputs, feeds, *args, **kwargs):
        seen.append((tuple(sorted(feeds)), tuple(outputs or ())))
        return original(self, outputs, feeds, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", counted)
    return seen


@pytest.mark.parametrize("method", ["grad-cam", "recipro-cam"])
def test_first_explain_runs_the_full_input_once(zoo_exports, runs, method):
    e = Explainer(zoo_exports.path("resnet", "legacy17"), quiet=True)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    runs.clear()  # loading may probe shapes; only the explain's runs count
    [a] = e.explain(image, method=method)
    full = [outputs for feeds, outputs in runs if feeds == ("input",)]
    assert len(full) == 1, runs
    assert a.layer in full[0] and a.extras["auto_layer"].startswith("last spatial tensor")
    assert len(runs) > 1  # the probe's tail run (and recipro's) feed the layer, not the image
    assert all(feeds == (a.layer,) for feeds, _ in runs if feeds != ("input",))
    runs.clear()
    [again] = e.explain(image, method=method)  # a new batch: one forward again, the layer chosen already
    assert [f for f, _ in runs].count(("input",)) == 1
    np.testing.assert_allclose(again.raw, a.raw, rtol=1e-5, atol=1e-6)


class Ignored(nn.Module):
    """The last map b reaches the logits only times 0: zeroing its positions leaves the score as it is."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2, self.fc = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1), nn.Linear(8, 4)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = torch.relu(self.conv2(a))
        return self.fc(a.mean((2, 3))) + 0.0 * b.amax((1, 2, 3))[:, None]


def test_the_probe_runs_and_walks_past_a_map_the_score_ignores(tmp_path):
    """The graph's guess is b; the probe (a tail run each) finds the score does not move at b nor at conv2's
    output before its ReLU, and takes a."""
    e = Explainer(_export(Ignored(), tmp_path / "ignored.onnx", (1, 3, 16, 16)), quiet=True)
    assert e.model.auto_layer()[0] == "/Relu_1_output_0"
    image = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    name, why = e.auto_layer(image)
    assert name == "/Relu_output_0"
    assert why.startswith("last spatial tensor (NCHW map, op Relu)") and why.endswith(
        "skipped '/Relu_1_output_0' (zeroing its positions does not change the target's score), "
        "'/conv2/Conv_output_0' (zeroing its positions does not change the target's score)")
