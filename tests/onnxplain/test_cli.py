"""The CLI: help on every command (fast: no heavy imports), inspect on the real model, -p parameters,
user errors exit 2 with one sentence."""
from __future__ import annotations

import json
import subprocess
import sys

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import helpers
import onnxplain
from onnxplain.cli import main
from onnxplain.jobs import read_maps
from real_models import ROOT

CHELSEA, EFFNET, LABELS = (str(ROOT / "models" / n) for n in ("chelsea.jpg", "efficientnet_lite0.onnx",
                                                              "imagenet_classes.txt"))


def all_commands(group=main, prefix=()):
    """Every command path under `group`, subgroups included (lazy commands load here)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from all_commands(command, prefix + (name,))


def test_every_command_is_listed():
    paths = {" ".join(p) for p in all_commands()}
    assert {"inspect", "explain", "methods", "features", "features peaks", "synth", "synth maximize", "audit",
            "serve", "graft"} <= paths
    assert len(paths) == 25  # 8 top-level, 9 under features, 8 under synth


HEAVY = ("onnx", "onnxruntime", "torch", "numpy", "cv2")
HELP_SCRIPT = """
import sys
import click
from onnxplain.cli import main

def paths(group, prefix=()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield prefix + (name,)
        if isinstance(command, click.Group):
            yield from paths(command, prefix + (name,))

codes = [main(["--help"], standalone_mode=False), main(["methods", "--help"], standalone_mode=False)]
first = sorted(m for m in {HEAVY} if m in sys.modules)
codes += [main([*p, "--help"], standalone_mode=False) for p in paths(main)]
print(first, sorted(m for m in {HEAVY} if m in sys.modules), set(codes))
"""


def test_help_imports_no_heavy_module():
    """`onnxplain --help`, `methods --help` and every `CMD --help` load neither onnx, onnxruntime, torch,
    numpy nor cv2 (a fresh interpreter; sys.modules checked after the help is printed)."""
    code = HELP_SCRIPT.replace("{HEAVY}", repr(HEAVY))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[] [] {0}"


def test_import_onnxplain_is_lazy():
    code = f"import sys, onnxplain; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "[]", done.stderr
    assert onnxplain.Explainer.__name__ == "Explainer" and callable(onnxplain.list_methods)


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
    assert entry["files"]["overlay"] == "overlays/chelsea.jpg.eigen-cam.282.png"  # under overlays/, by name
    for key in ("overlay", "heatmap", "raw"):
        assert (tmp_path / entry["files"][key]).exists()
    stored = read_maps(tmp_path, [entry["map_key"]])[entry["map_key"]]   # the float16 store, at input size
    assert stored.dtype == np.float16 and stored.shape == (224, 224)


# ---- -p KEY=VALUE through the command line ------------------------------------------------------
@pytest.fixture(scope="module")
def noise_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("noise") / "noise.png"
    cv2.imwrite(str(path), helpers.random_images(1, seed=3)[0])
    return path


def _occlusion(region_model, image, out, *params):
    args = ["--quiet", "explain", str(region_model), str(image), "-m", "occlusion", "-t", "1", "--preset", "raw01",
            "--out", str(out)]
    for param in params:
        args += ["-p", param]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("params, window, stride", [
    (["window=16x16", "stride=8"], (16, 16), (8, 8)),     # one number for a pair broadcasts to both sides
    (["window=0", "stride=2"], (2, 2), (2, 2)),           # 0 = automatic: round(32 / 14) = 2 at 32x32
    (["window=4x8", "stride=2,4"], (4, 8), (2, 4)),
])
def test_occlusion_window_and_stride_from_p(region_model, noise_png, tmp_path, params, window, stride):
    """The map written by the CLI equals the Python API's with the tuples spelt out (exactly: same runs)."""
    result = _occlusion(region_model, noise_png, tmp_path, *params)
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "explain.json").read_text())["explanations"][0]
    given = dict(p.split("=") for p in params)
    assert entry["params"]["stride"] == list(stride)
    assert entry["params"]["window"] == ([0, 0] if given["window"] == "0" else list(window))
    raw = np.load(tmp_path / entry["files"]["raw"])
    explainer = onnxplain.load(region_model, preprocess="raw01", quiet=True)
    expected = explainer.explain(str(noise_png), method="occlusion", target=1, window=window, stride=stride)[0]
    np.testing.assert_array_equal(raw, expected.raw)


@pytest.mark.parametrize("param, message", [
    ("stride=abc", "error: Parameter 'stride' of method 'occlusion' cannot be 'abc'; give one whole number "
                   "(used for both) or two like 16x16."),
    ("window=1x2x3", "error: Parameter 'window' of method 'occlusion' cannot be '1x2x3'; give one whole number "
                     "(used for both) or two like 16x16."),
    ("class_map=maybe", "error: Parameter 'class_map' of method 'occlusion' cannot be 'maybe'; give true or false."),
    ("stride", "error: Parameter 'stride' is not KEY=VALUE; write e.g. -p stride=8."),
])
def test_bad_p_value_is_one_sentence_and_exit_2(region_model, noise_png, tmp_path, param, message):
    result = _occlusion(region_model, noise_png, tmp_path / "out", param)
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert not (tmp_path / "out").exists()


def test_top0_target_says_what_is_wrong(region_model, noise_png, tmp_path):
    result = CliRunner().invoke(main, ["explain", str(region_model), str(noise_png), "-m", "eigen-cam", "-t", "top0",
                                       "--preset", "raw01", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip() == "error: Target 'top0' asks for no class; use top1 to top3 (or predicted)."
