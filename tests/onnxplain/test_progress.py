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
    a pipe and quiet=True get nothing."""
    images = helpers.random_images(1)
    for tty, quiet, shown in [(True, False, True), (False, False, False), (True, True, False)]:
        stderr = Terminal(tty)
        monkeypatch.setattr(sys, "stderr", stderr)
        explainer = Explainer(region_model, preprocess="raw01", device="cpu", quiet=quiet, batch_size=2)
        explainer.explain(images, method=method, target=0, **params)
        text = stderr.getvalue()
        assert (method in text and "batch" in text) == shown, (tty, quiet, text[-200:])


def test_cli_quiet_holds_for_that_run_only(region_model, monkeypatch):
    """`onnxplain --quiet` quiets the Explainer of that invocation; an Explainer(quiet=False) made later in
    the same process (a Python caller, a notebook) still shows its bar."""
    from click.testing import CliRunner

    from onnxplain.cli import main
    made = []
    real_init = Explainer.__init__
    monkeypatch.setattr(Explainer, "__init__", lambda self, *a, **k: made.append(k["quiet"]) or real_init(self, *a, **k))
    for args in (["--quiet", "inspect", str(region_model)], ["inspect", str(region_model)]):
        assert CliRunner().invoke(main, args).exit_code == 0
    assert made == [True, False]
    monkeypatch.setattr(Explainer, "__init__", real_init)
    assert CliRunner().invoke(main, ["--quiet", "inspect", str(region_model)]).exit_code == 0
    stderr = Terminal(True)
    monkeypatch.setattr(sys, "stderr", stderr)
    Explainer(region_model, preprocess="raw01", device="cpu", quiet=False, batch_size=2).explain(
        helpers.random_images(1), method="rise", target=0, n=64)
    assert "rise" in stderr.getvalue() and "batch" in stderr.getvalue()
