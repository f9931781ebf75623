"""The CLI: help on every command, inspect on the real model, user errors exit 2 with one sentence."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import onnxplain.cli as cli
from onnxplain.cli import main
from real_models import ROOT

CHELSEA, EFFNET, LABELS = (str(ROOT / "models" / n) for n in ("chelsea.jpg", "efficientnet_lite0.onnx",
                                                              "imagenet_classes.txt"))


def all_commands(group=main, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,)
        if hasattr(command, "commands"):
            yield from all_commands(command, prefix + (name,))


@pytest.mark.parametrize("path", list(all_commands()), ids=" ".join)
def test_help_on_every_command(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_inspect_effnet_with_image_prints_cat_classes(effnet):
    result = CliRunner().invoke(main, ["inspect", str(effnet), CHELSEA, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["producer"].startswith("pytorch") and report["opset"] == 17
    assert report["auto_layer"]["name"] == "/_swish_1/Clip_output_0"
    assert report["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    top = [entry["name"] for entry in report["predictions"][0]["top"]]
    assert {"tiger cat", "Egyptian cat", "tabby"} <= set(top[:3])
    text = CliRunner().invoke(main, ["inspect", str(effnet), "--spatial"]).output
    assert "/_swish_1/Clip_output_0" in text and "auto layer" in text


@pytest.mark.parametrize("args, message", [
    (["inspect", "missing.onnx"], "does not exist"),
    (["inspect", CHELSEA], "not a valid ONNX model"),
    (["inspect", EFFNET, LABELS], "could not be decoded"),
    (["explain", EFFNET, CHELSEA, "-m", "eigen-cam", "-l", "nope"],
     "no tensor named 'nope'"),
    (["explain", EFFNET, CHELSEA, "-m", "no-such-method"], "Unknown method"),
    (["explain", EFFNET, CHELSEA, "-m", "eigen-cam", "-t", "1000"],
     "out of range"),
])
def test_user_errors_exit_2_with_one_sentence(args, message, tmp_path):
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")] if args[0] == "explain" else args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written half-way


def test_explain_writes_overlay_npy_and_json(effnet, tmp_path):
    result = CliRunner().invoke(main, ["--quiet", "explain", str(effnet), CHELSEA, "-m", "eigen-cam",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "explain.json").read_text())
    entry = manifest["explanations"][0]
    assert entry["method"] == "eigen-cam" and entry["target"]["index"] == 282
    for key in ("overlay", "heatmap", "raw"):
        assert (tmp_path / entry["files"][key].split("/")[-1]).exists()
