"""Hostile input against the CLI, the Python API and the server: every refusal is exit 2 (or its HTTP status)
with its exact sentence, nothing half-written is left behind, and the server's limits hold under slow clients,
decompression bombs and huge cost parameters while /health keeps answering.

Models are tiny graphs written with onnx.helper (a 3x3 conv, GAP and a linear head on 32x32 inputs).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import onnxplain
from hostile_inputs import IMAGE, bomb, png, png_header, tiny, write_inputs
from onnxplain.cli import main
from onnxplain.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("hostile"))


def run_cli(args: list[str]):
    return CliRunner().invoke(main, ["--quiet"] + [str(a) for a in args])


# ---- the CLI corpus: exit 2, the exact sentence, nothing written --------------------------------------
def cli_cases(f: dict[str, Path]) -> dict[str, tuple[list, str]]:
    ok, image = f["ok"], f["image"]
    return {
        "model is a folder": ([f["folder"], image], f"Model path '{f['folder']}' is a folder, not a file; pass the "
                              ".onnx file inside it."),
        "model missing": ([f["folder"] / "none.onnx", image],
                          f"Model file '{f['folder'] / 'none.onnx'}' does not exist; check the path."),
        "model not onnx": ([image, image], f"Model file '{image}' is not a valid ONNX model (it could not be parsed; "
                           "it may be truncated or another format)."),
        "opset newer than onnxruntime": ([f["opset"], image], "The model uses opset 30 of ai.onnx, newer than "
                                         f"onnxruntime {_ort_version()} supports (up to {_ort_opset()}); re-export "
                                         f"it with opset {_ort_opset()} or lower, or upgrade onnxruntime."),
        "second required input": ([f["extra"], image], "The model needs input(s) 'scale' (float32 [1]) besides the "
                                  "image 'input', and onnxplain feeds only the image; bake the others in as constants "
                                  "(e.g. make them initializers with onnx or onnx-ir) or re-export the model with the "
                                  "image as its only input."),
        "absurd dims": ([f["dims"], image], "The model's input 'input' has dims ['N', 3, 1000000000000, "
                        "1000000000000], far more than an image of 50 megapixels; re-export it with a real image "
                        "size."),
        "NaN weights": ([f["nan"], image], "The model's weight 'conv.weight' holds 1 NaN value(s) of 216; the export "
                        "or the training went wrong, re-export from a checkpoint with finite weights."),
        "no outputs": ([f["noout"], image], f"Model file '{f['noout']}' declares no graph outputs, so there is "
                       "nothing to explain; re-export it with its outputs."),
        "labels bad JSON": ([ok, image, "--labels", f["labels_json"]], f"Label file '{f['labels_json']}' is not "
                            "valid JSON (Expecting value at line 1); write a JSON list of names or a text file with "
                            "one name per line."),
        "labels not UTF-8": ([ok, image, "--labels", f["labels_latin1"]], f"Label file '{f['labels_latin1']}' is "
                             "not UTF-8 text; save it as UTF-8 with one class name per line."),
        "labels a folder": ([ok, image, "--labels", f["folder"]], f"Label file '{f['folder']}' is a folder; pass a "
                            "text file with one class name per line."),
        "image is a folder": ([ok, f["folder"]], f"No images in '{f['folder']}' (looked for .bmp, .jpeg, .jpg, "
                              ".png, .tif, .tiff, .webp)."),  # a folder is an input: of its images
        "image missing": ([ok, f["folder"] / "x.png"], f"Input '{f['folder'] / 'x.png'}' does not exist; pass a "
                          "folder of images, a manifest (.csv, .jsonl, .parquet with a 'path' column) or image files."),
        "image not an image": ([ok, f["a_file"]], f"Image file '{f['a_file']}' could not be decoded as an image; "
                               "use a format opencv reads (PNG, JPEG, ...)."),
        "header claims 100000x100000": ([ok, f["header_bomb"]], f"Image file '{f['header_bomb']}' claims 10000 "
                                        "megapixels, over the limit of 50 megapixels; scale it down or raise "
                                        "--max-pixels."),
        "decompression bomb": ([ok, f["bomb"], "--max-pixels", 1_000_000], f"Image file '{f['bomb']}' is "
                               "2000x2000 (4.0 megapixels), over the limit of 1 megapixels; scale it down or raise "
                               "--max-pixels."),
        "rise n=1e12": ([ok, image, "-m", "rise", "-p", "n=1e12"], "Method 'rise' with these parameters needs about "
                        "1,000,000,000,000 forward passes per image, over the limit of 100,000; lower n, steps or "
                        "the number of windows, or raise --max-forwards."),
        "smoothgrad n=1e12": ([ok, image, "-m", "smoothgrad", "-p", "n=1e12"], "Method 'smoothgrad' with these "
                              "parameters needs about 1,000,000,000,000 forward passes per image, over the limit of "
                              "100,000; lower n, steps or the number of windows, or raise --max-forwards."),
        "ig steps over --max-forwards": ([ok, image, "-m", "integrated-gradients", "-p", "steps=500",
                                          "--max-forwards", 100], "Method 'integrated-gradients' with these "
                                         "parameters needs about 500 forward passes per image, over the limit of "
                                         "100; lower n, steps or the number of windows, or raise --max-forwards."),
        "occlusion windows over --max-forwards": ([ok, image, "-m", "occlusion", "-p", "window=2", "-p", "stride=1",
                                                   "--max-forwards", 500], "Method 'occlusion' with these parameters "
                                                  "needs about 962 forward passes per image, over the limit of 500; "
                                                  "lower n, steps or the number of windows, or raise "
                                                  "--max-forwards."),
        "score-cam channels over --max-forwards": ([ok, image, "-m", "score-cam", "--max-forwards", 5],
                                                   "Method 'score-cam' with these parameters needs about 9 forward "
                                                   "passes per image, over the limit of 5; lower n, steps or the "
                                                   "number of windows, or raise --max-forwards."),
        "rise n=2.5": ([ok, image, "-m", "rise", "-p", "n=2.5"], "Parameter 'n' of method 'rise' cannot be '2.5'; "
                       "give a whole number like 8."),
        "rise n=abc": ([ok, image, "-m", "rise", "-p", "n=abc"], "Parameter 'n' of method 'rise' cannot be 'abc'; "
                       "give a whole number like 8."),
        "unknown method": ([ok, image, "-m", "gradcam"], "Unknown method 'gradcam' (did you mean grad-cam, "
                           "xgrad-cam, grad-cam++?)."),
        "--out is a file": ([ok, image, "--out", f["a_file"]], f"--out '{f['a_file']}' is a file, not a folder; give "
                            "a folder (it is created when missing)."),
        "--out under a file": ([ok, image, "--out", f["a_file"] / "sub"], f"--out '{f['a_file'] / 'sub'}' cannot be "
                               f"created: '{f['a_file']}' is a file; choose another folder."),
    }


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def _ort_opset() -> str:
    """The newest opset onnxruntime supports, from its own refusal of opset 30."""
    import re

    import onnxruntime
    try:
        onnxruntime.InferenceSession(tiny(opset=30), providers=["CPUExecutionProvider"])
    except Exception as exc:
        return re.search(r"till opset (\d+)", str(exc)).group(1)
    return "?"


FORWARDS_RISE = ("Method 'rise' with these parameters needs about 1,000,000,000,000 forward passes per image, over "
                 "the limit of 100,000; lower n, steps or the number of windows, or raise --max-forwards.")
CLI_CASES = ["model is a folder", "model missing", "model not onnx", "opset newer than onnxruntime",
             "second required input", "absurd dims", "NaN weights", "no outputs", "labels bad JSON",
             "labels not UTF-8", "labels a folder", "image is a folder", "image missing", "image not an image",
             "header claims 100000x100000", "decompression bomb", "rise n=1e12", "smoothgrad n=1e12",
             "ig steps over --max-forwards", "occlusion windows over --max-forwards",
             "score-cam channels over --max-forwards", "rise n=2.5", "rise n=abc", "unknown method",
             "--out is a file", "--out under a file"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_refuses_with_one_sentence_and_writes_nothing(case, files, tmp_path):
    args, sentence = cli_cases(files)[case]
    out = tmp_path / "out"
    extra = [] if "--out" in args else ["--out", out]
    result = run_cli(["explain"] + args + extra)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {sentence}"
    assert "Traceback" not in result.output
    assert not out.exists()


OTHER_COMMANDS = {
    "synth maximize steps": (["synth", "maximize", "{ok}", "-l", "relu", "-c", "0", "--steps", "1000000000"],
                             "Method 'synth maximize' with these parameters needs about 1,000,000,000 forward passes "
                             "per image, over the limit of 100,000; lower n, steps or the number of windows, or raise "
                             "--max-forwards."),
    "synth dream octaves": (["synth", "dream", "{ok}", "{image}", "-l", "relu", "-p", "octaves=100000"],
                            "Method 'synth dream' with these parameters needs about 1,000,000 forward passes per "
                            "image, over the limit of 100,000; lower n, steps or the number of windows, or raise "
                            "--max-forwards."),
    "audit steps": (["audit", "{ok}", "{images}", "-m", "eigen-cam", "--steps", "10000000"], "Method "
                    "'deletion/insertion' with these parameters needs about 20,000,002 forward passes per image, over "
                    "the limit of 100,000; lower n, steps or the number of windows, or raise --max-forwards."),
    "audit rise n": (["audit", "{ok}", "{images}", "-m", "rise", "-p", "rise:n=1e12"], FORWARDS_RISE),
}


@pytest.mark.parametrize("case", list(OTHER_COMMANDS))
def test_other_commands_bound_their_costs(case, files, tmp_path):
    args, sentence = OTHER_COMMANDS[case]
    out = tmp_path / "out"
    result = run_cli([a.format(**files) for a in args] + ["--out", out])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {sentence}"
    assert not out.exists()


def test_audit_compare_with_other_classes_leaves_nothing(files, tmp_path):
    out = tmp_path / "audit"
    result = run_cli(["audit", files["ok"], files["images"], "--compare", files["ten"], "--no-sanity", "-m",
                      "eigen-cam", "--out", out])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: The model has 3 classes and the --compare model 10; compare two "
                                     "versions of the same classifier (same classes).")
    assert not out.exists()


def test_disk_full_mid_run_removes_what_was_written(files, tmp_path, monkeypatch):
    """The third file hits ENOSPC: exit 2 with one sentence, and the two written before it are gone too."""
    import errno

    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    result = run_cli(["explain", files["ok"], files["image"], "-m", "eigen-cam", "--out", out])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: Could not write '{calls[2]}' (No space left on device); free some "
                                     "space or choose another output folder with --out.")
    assert not out.exists()


def test_explain_json_is_strict_with_nan_as_null(files, tmp_path, caplog):
    """An infinite bias makes a score infinite and probabilities NaN: explain.json still parses strictly, with
    null there."""
    out = tmp_path / "out"
    result = run_cli(["explain", files["inf"], files["image"], "-m", "eigen-cam", "--out", out])
    assert result.exit_code == 0, result.output
    text = (out / "explain.json").read_text()
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in explain.json"))
    scores = [c["score"] for c in data["predictions"][0]["top"]]
    assert None in scores
    assert any("NaN or infinite value(s) in 'explain.json' were written as null" in r.message
               for r in caplog.records)


def test_sigterm_stops_audit_with_an_incomplete_report(files, tmp_path):
    """SIGTERM (a CI timeout) is handled as Ctrl-C: exit 130, and audit.json says complete: false."""
    out = tmp_path / "audit"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "converters")])}
    process = subprocess.Popen([sys.executable, "-m", "onnxplain.cli", "--quiet", "audit", str(files["ok"]),
                                str(files["images"]), "-m", "rise", "-p", "rise:n=60000", "--no-sanity",
                                "--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = out / "audit.log.jsonl"  # one line per audited image: stop once the first is done
        while not (log.exists() and log.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 130
    finally:
        process.kill()
    report = json.loads((out / "audit.json").read_text())
    assert report["complete"] is False and report["summary"]["images"] >= 1
    assert (out / "audit.html").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_audit_complete_only_when_finished(files, tmp_path):
    report = onnxplain.audit.run_audit(files["ok"], files["images"], tmp_path, onnxplain.audit.AuditOptions(
        methods=("eigen-cam",), sanity=False, steps=4), quiet=True)
    assert report["complete"] is True
    assert json.loads((tmp_path / "audit.json").read_text())["complete"] is True


# ---- the Python API corpus: a UserError with its exact sentence ---------------------------------------
@pytest.fixture(scope="module")
def explainer(files):
    return onnxplain.Explainer(files["ok"], quiet=True)


API_CASES = {
    "predict([])": (lambda e, f: e.predict([]),
                    "No images were given; pass at least one image (a path, encoded bytes or an array)."),
    "0x0 array": (lambda e, f: e.predict(np.zeros((0, 0, 3), np.uint8)),
                  "An image array must be (H, W) or (H, W, 1|3|4) with H, W > 0, not (0, 0, 3)."),
    "4-D array": (lambda e, f: e.predict(np.zeros((1, 1, 2, 2, 3), np.uint8)),
                  "An image array must be (H, W) or (H, W, 1|3|4) with H, W > 0, not (1, 2, 2, 3)."),
    "int as image": (lambda e, f: e.predict(5), "Images must be a path, encoded bytes, an array or a list of these, "
                                                "not int."),
    "int in a list": (lambda e, f: e.predict([5]), "An image must be a path, encoded bytes or a numpy array, not "
                                                   "int."),
    "NaN pixels": (lambda e, f: e.predict(np.full((8, 8, 3), np.nan, np.float32)),
                   "The image array holds NaN or infinite values; pass finite pixel values."),
    "string array": (lambda e, f: e.predict(np.array([["a"]])), "An image array must hold numbers, not <U1."),
    "bytes not an image": (lambda e, f: e.predict(b"not an image"), "The image bytes could not be decoded as an "
                           "image; use a format opencv reads (PNG, JPEG, ...)."),
    "bomb bytes": (lambda e, f: e.predict(png_header(100_000, 100_000)), "The image claims 10000 megapixels, "
                   "over the limit of 50 megapixels; scale it down or raise --max-pixels."),
    "rise n=2.5": (lambda e, f: e.explain(IMAGE, "rise", n=2.5), "Parameter 'n' of method 'rise' cannot be '2.5'; "
                   "give a whole number like 8."),
    "rise n=1e12": (lambda e, f: e.explain(IMAGE, "rise", n=10**12), "Method 'rise' with these parameters needs "
                    "about 1,000,000,000,000 forward passes per image, over the limit of 100,000; lower n, steps or "
                    "the number of windows, or raise --max-forwards."),
    "rise n list": (lambda e, f: e.explain(IMAGE, "rise", n=[3]), "Parameter 'n' of method 'rise' cannot be '[3]'; "
                    "give a whole number like 8."),
    "rise seed bool": (lambda e, f: e.explain(IMAGE, "rise", seed=True), "Parameter 'seed' of method 'rise' cannot "
                       "be 'True'; give a whole number like 8."),
    "occlusion window text list": (lambda e, f: e.explain(IMAGE, "occlusion", window=["a"]), "Parameter 'window' of "
                                   "method 'occlusion' cannot be '['a']'; give one whole number (used for both) or "
                                   "two like 16x16."),
    "rise score int": (lambda e, f: e.explain(IMAGE, "rise", score=3), "Parameter 'score' of method 'rise' cannot "
                       "be '3'; give a name (text)."),
    "method int": (lambda e, f: e.explain(IMAGE, 5), "method must be a method's name (text), not int."),
    "layer int": (lambda e, f: e.explain(IMAGE, "eigen-cam", layer=4), "layer must be a tensor name, auto or "
                  "last-conv (text), not int."),
    "top text": (lambda e, f: e.predict(IMAGE, top="x"), "top must be a whole number of at least 1, not 'x'."),
    "top zero": (lambda e, f: e.predict(IMAGE, top=0), "top must be a whole number of at least 1, not 0."),
    "explain_bytes path": (lambda e, f: e.explain_bytes(str(f["image"])), "explain_bytes takes the encoded image as "
                           "bytes, not a path; read the file first."),
    "model int": (lambda e, f: onnxplain.Explainer(5), "A model must be a path, ONNX bytes or a ModelProto, not int."),
    "labels int": (lambda e, f: onnxplain.Explainer(f["ok"], labels=3), "Labels must be a file path or a list of "
                   "names, not int."),
    "max_pixels zero": (lambda e, f: onnxplain.Explainer(f["ok"], max_pixels=0), "The limit 'max_pixels' must be a "
                        "whole number of at least 1, not 0."),
    "max_forwards text": (lambda e, f: onnxplain.Explainer(f["ok"], max_forwards="9"), "The limit 'max_forwards' "
                          "must be a whole number of at least 1, not '9'."),
    "default rise over max_forwards": (lambda e, f: onnxplain.Explainer(f["ok"], max_forwards=10).explain(
        IMAGE, "rise"), "Method 'rise' with these parameters needs about 4,000 forward passes per image, over the "
                        "limit of 10; lower n, steps or the number of windows, or raise --max-forwards."),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses_with_one_sentence(case, explainer, files):
    call, sentence = API_CASES[case]
    with pytest.raises(UserError) as info:
        call(explainer, files)
    assert str(info.value) == sentence


def test_opset_newer_than_onnxruntime_is_refused_when_the_model_loads(monkeypatch):
    """Model.load says it, before any onnxruntime session of the model exists (the Explainer would only have said
    it at its first run's session); onnxruntime's newest opset itself loads."""
    from onnxplain.model import Model
    newest = int(_ort_opset())
    sessions = []
    import onnxruntime
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda model, *a, **k: sessions.append(model) or
                        real(model, *a, **k))
    with pytest.raises(UserError) as info:
        Model.load(tiny(opset=newest + 2))
    assert str(info.value) == (f"The model uses opset {newest + 2} of ai.onnx, newer than onnxruntime "
                               f"{_ort_version()} supports (up to {newest}); re-export it with opset {newest} or "
                               "lower, or upgrade onnxruntime.")
    assert tiny(opset=newest + 2) not in sessions
    assert Model.load(tiny(opset=newest)).opset == newest


def test_inf_weights_flag_nonfinite_scores(files, caplog):
    e = onnxplain.Explainer(files["inf"], quiet=True)
    with caplog.at_level("WARNING"):
        [prediction] = e.predict(IMAGE)
    assert not all(np.isfinite(s) for _, _, s, _ in prediction.top)
    assert any("weights hold +inf in 1 tensor (the first 'fc.bias' with 1 value)" in r.message
               for r in caplog.records)
    assert any("output 'logits' holds" in r.message and "NaN or infinite" in r.message for r in caplog.records)


def test_infinite_weights_are_said_by_inspect_and_plus_inf_warned_by_explain(files, tmp_path):
    """-inf (what attention masks use) is one sentence in inspect and no warning on explanations; +inf is the
    same sentence in inspect and a warning on every explanation; neither is refused."""
    minus = tmp_path / "minus.onnx"
    minus.write_bytes(tiny(weight=-float("inf")))
    expected = {minus: "The model's weights hold -inf in 1 tensor (attention masks use it; the first "
                       "'conv.weight' with 1 value).",
                files["inf"]: "The model's weights hold +inf in 1 tensor (the first 'fc.bias' with 1 value); "
                              "attention masks use -inf, so +inf is likely an export bug: check the explanations' "
                              "scores."}
    for path, sentence in expected.items():
        result = run_cli(["inspect", path, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["weights"]["note"] == sentence
        text = run_cli(["inspect", path])
        assert sentence in text.stdout
        [attribution] = onnxplain.Explainer(path, quiet=True).explain(IMAGE, "cam", target=0)
        assert (sentence in attribution.warnings) == (path == files["inf"])
    clean = run_cli(["inspect", files["ok"], "--json"])
    assert json.loads(clean.stdout)["weights"]["note"] is None


# ---- images: orientation and bounded output --------------------------------------------------------------
def test_jpeg_exif_orientation_is_applied(explainer):
    """A JPEG stored landscape with Orientation 6 (rotate 90 clockwise) decodes as Pillow shows it: portrait."""
    from PIL import Image, ImageOps

    from onnxplain.images import decode
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = (255, 0, 0)  # red on the left of the stored pixels -> on top once rotated clockwise
    buffer = io.BytesIO()
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(buffer, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode(buffer.getvalue())
    reference = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue()))))
    assert decoded.shape == (40, 20, 3) == reference.shape
    assert np.abs(decoded.astype(int) - reference.astype(int)).mean() < 3  # two JPEG decoders
    assert decoded[:8, :, 0].mean() > 200 and decoded[-8:, :, 0].mean() < 50
    batch = explainer.prepare(buffer.getvalue())
    assert batch.originals[0].shape == (40, 20, 3)


def test_huge_original_gets_bounded_heatmap(files):
    e = onnxplain.Explainer(files["ok"], quiet=True, max_output_side=64)
    wide = np.full((100, 300, 3), 90, np.uint8)
    [attribution] = e.explain(wide, "eigen-cam", target=0)
    assert attribution.heatmap.shape == (21, 64) and attribution.overlay().shape == (21, 64, 3)
    [small] = onnxplain.Explainer(files["ok"], quiet=True).explain(wide, "eigen-cam", target=0)
    assert small.heatmap.shape == (100, 300)
    # the box is given in the original's pixels either way
    bounded_map = e.prepare(wide).pixel_maps[0]
    full_map = onnxplain.Explainer(files["ok"], quiet=True).prepare(wide).pixel_maps[0]
    np.testing.assert_allclose(bounded_map.box_to_input((30, 10, 150, 90)), full_map.box_to_input((30, 10, 150, 90)),
                               atol=0.6)


# ---- the server corpus: the status and the exact sentence, as {"error": sentence} ------------------------
@pytest.fixture(scope="module")
def http(files):
    from starlette.testclient import TestClient

    from onnxplain.serve import create_app
    app = create_app(onnxplain.Explainer(files["ok"], quiet=True, max_pixels=1_000_000), workers=1)
    with TestClient(app) as client:
        yield client


FORWARDS = ("Method '{}' with these parameters needs about 1,000,000,000,000 forward passes per image, over the "
            "limit of 100,000; lower n, steps or the number of windows (field 'params'), or raise the server's "
            "--max-forwards.")
SERVER_CASES = {
    "header claims 100000x100000": ("/predict", {"image": png_header(100_000, 100_000)}, 413,
                                    "The image claims 10000 megapixels, over the limit of 1 megapixels; scale it "
                                    "down or raise the server's --max-pixels."),
    "decompression bomb": ("/explain", {"image": bomb(), "method": "eigen-cam"}, 413, "The image is 2000x2000 (4.0 "
                           "megapixels), over the limit of 1 megapixels; scale it down or raise the server's --max-pixels."),
    "rise n=1e12": ("/explain", {"method": "rise", "params": {"n": 1e12}}, 413, FORWARDS.format("rise")),
    "smoothgrad n=1e12": ("/explain", {"method": "smoothgrad", "params": {"n": 10**12}}, 413,
                          FORWARDS.format("smoothgrad")),
    "rise n=2.5": ("/explain", {"method": "rise", "params": {"n": 2.5}}, 400, "Parameter 'n' of method 'rise' "
                   "cannot be '2.5'; give a whole number like 8."),
    "rise n=NaN": ("/explain", {"method": "rise", "params": {"n": float("nan")}}, 400, "Parameter 'n' of method "
                   "'rise' cannot be 'nan'; give a whole number like 8."),
    "rise n list": ("/explain", {"method": "rise", "params": {"n": [1, 2]}}, 400, "Parameter 'n' of method 'rise' "
                    "cannot be '[1, 2]'; give a whole number like 8."),
    "not an image": ("/predict", {"image": b"GIF89a broken"}, 400, "The image bytes could not be decoded as an "
                     "image; use a format opencv reads (PNG, JPEG, ...)."),
    "method a number": ("/explain", {"method": 5}, 422, "Field 'method' must be a string."),
    "top 1e12": ("/predict", {"top": 10**12}, 422, "Field 'top' must be an integer from 1 to 1000."),
    "alpha NaN": ("/explain", {"method": "eigen-cam", "alpha": float("nan")}, 422,
                  "Field 'alpha' must be a number from 0.0 to 1.0."),
    "unknown method": ("/explain", {"method": "gradcam"}, 400, "Unknown method 'gradcam' (did you mean grad-cam, "
                       "xgrad-cam, grad-cam++?)."),
    "deeply nested JSON": ("/predict", None, 422, "The body is not valid JSON."),
}


@pytest.mark.parametrize("case", list(SERVER_CASES))
def test_server_refuses_with_one_sentence(case, http):
    import base64
    path, fields, status, sentence = SERVER_CASES[case]
    if fields is None:
        response = http.post(path, content=b"[" * 100_000 + b"]" * 100_000,
                             headers={"content-type": "application/json"})
    else:
        fields = {"image": png(IMAGE), **fields}
        body = json.dumps({**fields, "image": base64.b64encode(fields["image"]).decode()})  # NaN as JSON allows
        response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json() == {"error": sentence}


def test_server_answers_nonfinite_scores_as_strict_json(files):
    from starlette.testclient import TestClient

    from onnxplain.serve import create_app
    with TestClient(create_app(onnxplain.Explainer(files["inf"], quiet=True))) as client:
        response = client.post("/predict", content=png(IMAGE), headers={"content-type": "image/png"})
    assert response.status_code == 200
    answer = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"bare {c} in the answer"))
    assert answer["top"][0]["score"] is None and answer["top"][0]["probability"] is None


def test_targets_run_one_by_one_multiply_the_forward_count(effnet, tmp_path, monkeypatch):
    """grad-cam runs once per target: `-t all` on a 1000-class model is 1000 times its cost, refused before any
    backward pass; a method that explains every target in one run (recipro-cam) pays its forwards once."""
    from onnxplain.explainer import Explainer
    image = tmp_path / "x.png"
    image.write_bytes(png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    ran = []
    real_run = Explainer._run_method
    monkeypatch.setattr(Explainer, "_run_method", lambda self, method, *a, **k: ran.append(method.name)
                        or real_run(self, method, *a, **k))
    result = CliRunner().invoke(main, ["--quiet", "explain", str(effnet), str(image), "-m", "grad-cam", "-t", "all",
                                       "--max-forwards", "500", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and ran == []
    assert result.output.strip() == ("error: Method 'grad-cam' runs once per target: 1,000 targets of about 1 "
                                     "forward passes each need about 1,000 per image, over the limit of 500; ask "
                                     "for fewer targets (-t), lower n or steps, or raise --max-forwards.")
    explainer = onnxplain.load(effnet, quiet=True, max_forwards=60)
    with pytest.raises(UserError, match="^Method 'grad-cam' runs once per target: 5 targets of about 1 forward "
                                        "passes each need about 5 per image, over the limit of 4;"):
        onnxplain.load(effnet, quiet=True, max_forwards=4).explain(str(image), method="grad-cam", target="top5")
    assert ran == []
    top5 = explainer.explain(str(image), method="recipro-cam", target="top5")   # 1 + 7 x 7 forwards, not 5 x 50
    assert len(top5) == 5 and ran == ["recipro-cam"]
