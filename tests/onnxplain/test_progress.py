"""Progress bars: shown on a terminal for long work, silent when piped or quiet."""
from __future__ import annotations

import io
import sys

import pytest

import helpers
from onnxplain import Explainer, progress


class Terminal(io.StringIO):
    """stderr as a terminal would be: tqdm writes there, and isatty says yes."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("method, params", [("score-cam", {}), ("ablation-cam", {}), ("occlusion", {"window": (4, 4)}),
                                            ("rise", {"n": 64})])
def test_one_bar_on_a_terminal_none_when_piped_or_quiet(region_model, monkeypatch, method, params):
    """With batch size 2 each method runs at least 4 batches: a terminal gets a bar named after the method;
    a pipe, quiet=True and the global --quiet get nothing."""
    images = helpers.random_images(1)
    for tty, quiet, global_quiet, shown in [(True, False, False, True), (False, False, False, False),
                                            (True, True, False, False), (True, False, True, False)]:
        stderr = Terminal(tty)
        monkeypatch.setattr(sys, "stderr", stderr)
        monkeypatch.setattr(progress, "QUIET", global_quiet)
        explainer = Explainer(region_model, preprocess="raw01", device="cpu", quiet=quiet, batch_size=2)
        explainer.explain(images, method=method, target=0, **params)
        text = stderr.getvalue()
        assert (method in text and "batch" in text) == shown, (tty, quiet, global_quiet, text[-200:])
