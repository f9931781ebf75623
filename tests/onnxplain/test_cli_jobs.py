"""The streaming jobs through the command line: folders, manifests, error rows, resume, shards, overlays,
`features embed`, `audit` on a manifest, and `--ray` on a local Ray (CliRunner, RegionNet exported here)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from helpers import RegionNet, export, random_images, region_class_images
from onnxplain.cli import main
from onnxplain.jobs import JobSpec, read_maps, read_results, run_job

@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(export(RegionNet(), tmp_path_factory.mktemp("clijobs") / "region.onnx"))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Seven PNGs in a/ and b/ with clashing names (a/0.png, b/0.png, ...); the first three are RegionNet's
    class images (maps that are not constant)."""
    root = tmp_path_factory.mktemp("photos")
    for i, image in enumerate(list(region_class_images()) + random_images(4, seed=5)):
        path = root / ("a" if i % 2 else "b") / f"{i // 2}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image[:, :, ::-1])
    return root


def explain(model: str, *args: str, method: str = "grad-cam"):
    """`onnxplain --quiet explain MODEL ... -m METHOD --preset raw01`, stdout and stderr kept apart."""
    return CliRunner().invoke(main, ["--quiet", "explain", model, *args, "-m", method, "--preset", "raw01"])


def rows(out: Path, drop=("seconds",)) -> dict[str, dict]:
    """Result rows by path, without timing (and whatever else `drop` names)."""
    return {r["path"]: {k: v for k, v in r.items() if k not in drop} for r in read_results(out).to_pylist()}


def test_folder_with_nested_same_name_files_equals_the_python_job(model, photos, tmp_path):
    """Names are relative paths (a/0.png and b/0.png both written); rows and maps equal run_job's."""
    out = tmp_path / "cli"
    result = explain(model, str(photos), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"7 images: 7 written, 0 already done -> {out}"
    written = rows(out, drop=("seconds", "source"))
    assert sorted(written) == ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "b/2.png", "b/3.png"]
    predicted = {p: r["predictions"][0]["index"] for p, r in written.items()}
    for path, index in predicted.items():   # a/0.png and b/0.png side by side, nothing overwritten
        for suffix in (".png", ".npy", ".raw.npy"):
            assert (out / "overlays" / f"{path}.grad-cam.{index}{suffix}").is_file()
    spec = JobSpec(model, ("grad-cam",), preset="raw01", device="auto", overlays=True)
    run_job(spec, photos, tmp_path / "api")
    assert written == rows(tmp_path / "api", drop=("seconds", "source"))
    cli_maps, api_maps = read_maps(out), read_maps(tmp_path / "api")
    assert cli_maps.keys() == api_maps.keys() and len(cli_maps) == 7
    for key in cli_maps:
        np.testing.assert_array_equal(cli_maps[key], api_maps[key])
    manifest = json.loads((out / "explain.json").read_text())
    assert manifest["schema_version"] == 2 and manifest["params"] == {"grad-cam": {}}
    assert [e["image"] for e in manifest["explanations"]] == sorted(written)
    first = manifest["explanations"][0]
    a0 = predicted["a/0.png"]
    assert first["files"]["overlay"] == f"overlays/a/0.png.grad-cam.{a0}.png" and first["target"]["index"] == a0
    assert first["map_key"] == f"a/0.png::grad-cam::{a0}"


def test_two_folders_are_named_from_the_folder_they_share(model, photos, tmp_path):
    result = explain(model, str(photos / "a"), str(photos / "b"), "--out", str(tmp_path), "--no-overlays")
    assert result.exit_code == 0, result.output
    assert {"a/0.png", "b/0.png"} <= set(rows(tmp_path)) and len(rows(tmp_path)) == 7


def test_csv_manifest_targets_each_row(model, photos, tmp_path):
    """A row's `target` is its class (index or name); an empty cell takes --target (predicted here)."""
    manifest = photos / "targets.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["path", "target"], ["b/0.png", "2"], ["a/0.png", ""], ["b/1.png", "0"]])
    out = tmp_path / "out"
    result = explain(model, str(manifest), "--out", str(out), "--no-overlays")
    assert result.exit_code == 0, result.output
    found = rows(out)
    assert list(found) == ["b/0.png", "a/0.png", "b/1.png"]   # manifest order
    assert [found[p]["target"] for p in found] == ["2", None, "0"]
    indices = {p: [e["target_index"] for e in r["explanations"]] for p, r in found.items()}
    assert indices == {"b/0.png": [2], "a/0.png": [found["a/0.png"]["predictions"][0]["index"]], "b/1.png": [0]}
    a0 = found["a/0.png"]["predictions"][0]["index"]
    assert set(read_maps(out)) == {"b/0.png::grad-cam::2", f"a/0.png::grad-cam::{a0}", "b/1.png::grad-cam::0"}


def test_a_bad_image_is_one_stderr_line_and_the_others_are_written(model, photos, tmp_path):
    root = tmp_path / "in"
    for path in sorted(photos.rglob("*.png"))[:3]:
        (root / path.relative_to(photos)).parent.mkdir(parents=True, exist_ok=True)
        (root / path.relative_to(photos)).write_bytes(path.read_bytes())
    (root / "a" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = explain(model, str(root), "--out", str(out))
    assert result.exit_code == 1
    assert [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")] == [
        f"failed: Image file '{root / 'a' / 'broken.png'}' could not be decoded as an image; use a "
        "format opencv reads (PNG, JPEG, ...)."]   # the sentence names the file: no name before it
    assert result.stdout.strip().splitlines()[-1] == (
        f"4 images: 4 written, 0 already done, 1 failed (their error rows are in the results; exit code 1) -> {out}")
    found = rows(out)
    assert found["a/broken.png"]["explanations"] == [] and found["a/broken.png"]["error"] == (
        f"Image file '{root / 'a' / 'broken.png'}' could not be decoded as an image; use a format opencv reads "
        "(PNG, JPEG, ...).")
    assert sum(r["error"] is None and len(r["explanations"]) == 1 for r in found.values()) == 3
    assert json.loads((out / "explain.json").read_text())["errors"][0]["image"] == "a/broken.png"


@pytest.mark.parametrize("extra", [(), ("--resume",)])   # --resume into a new folder checks the same
def test_settings_that_fail_every_image_exit_2_and_write_nothing(model, photos, tmp_path, extra):
    """A target the model does not have fails the first images all the same way: one sentence, exit 2."""
    result = explain(model, str(photos), "--out", str(tmp_path / "out"), "-t", "7", *extra)
    assert result.exit_code == 2
    assert result.output.strip() == ("error: Target class 7 is out of range: output 'scores' has 3 classes "
                                     "(0..2).")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_only_image_is_refused_naming_its_file(model, tmp_path):
    """The sentence comes from images.decode, told the file the job read the bytes from."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = explain(model, str(broken), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: Image file '{broken}' could not be decoded as an image; use a format "
                                     "opencv reads (PNG, JPEG, ...).")
    assert not (tmp_path / "out").exists()


def test_resume_after_a_partial_run_ends_identical_and_then_writes_nothing(model, photos, tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    args = ("--out", "--flush-every", "2", "--batch-size", "2", "--maps", "raw")   # parts of 2 images
    assert explain(model, str(photos), args[0], str(whole), *args[1:]).exit_code == 0
    assert explain(model, str(photos), args[0], str(part), *args[1:]).exit_code == 0
    for name in ("part-00002.parquet", "part-00003.parquet"):   # a kill after two parts: the last ones never came
        (part / "parts" / name).unlink()
    (part / "results.parquet").unlink()
    result = explain(model, str(photos), args[0], str(part), *args[1:], "--resume")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"7 images: 3 written, 4 already done -> {part}"
    assert rows(part) == rows(whole)
    assert read_maps(part).keys() == read_maps(whole).keys()
    files = {p: p.stat().st_mtime_ns for p in (part / "parts").iterdir()}
    again = explain(model, str(photos), args[0], str(part), *args[1:], "--resume")
    assert again.stdout.strip().splitlines()[-1] == f"7 images: 0 written, 7 already done -> {part}"
    assert {p: p.stat().st_mtime_ns for p in (part / "parts").iterdir()} == files   # no new part
    assert rows(part) == rows(whole)


def test_resume_keeps_one_row_per_failed_image_and_retry_errors_runs_them_again(model, photos, tmp_path):
    """A file that cannot be read runs again on each --resume (it may be there now), a corrupt one only with
    --retry-errors (same bytes, same settings: the same error); either way its earlier error row is replaced."""
    root = tmp_path / "in"
    root.mkdir()
    for i, path in enumerate(sorted(photos.rglob("*.png"))[:3]):
        (root / f"{i}.png").write_bytes(path.read_bytes())
    (root / "broken.png").write_bytes(b"not a png")
    (root / "m.csv").write_text("path\n0.png\n1.png\n2.png\nbroken.png\nmissing.png\n")
    out, manifest = tmp_path / "out", str(root / "m.csv")
    unreadable = f"failed: Image file '{root / 'missing.png'}' cannot be read."
    undecodable = (f"failed: Image file '{root / 'broken.png'}' could not be decoded as an image; use a format "
                   "opencv reads (PNG, JPEG, ...).")
    failed = "(their error rows are in the results; exit code 1)"
    assert explain(model, manifest, "--out", str(out)).exit_code == 1
    kept = "1 earlier error kept (rerun them with --retry-errors)"
    for extra, line, stderr in [((), f"5 images: 1 written, 4 already done, 1 failed {failed}, {kept}", [unreadable]),
                                (("--retry-errors",), f"5 images: 2 written, 3 already done, 2 failed {failed}",
                                 [undecodable, unreadable])]:
        result = explain(model, manifest, "--out", str(out), "--resume", *extra)
        assert result.exit_code == 1
        assert result.stdout.strip().splitlines()[-1] == f"{line} -> {out}"
        assert [x for x in result.stderr.strip().splitlines() if not x.startswith("warning:")] == stderr
        found = read_results(out).to_pylist()
        assert sorted(r["path"] for r in found) == ["0.png", "1.png", "2.png", "broken.png", "missing.png"]
        assert [r["error"] is not None for r in sorted(found, key=lambda r: r["path"])] == [False] * 3 + [True] * 2
    refused = explain(model, manifest, "--out", str(out), "--retry-errors")
    assert refused.exit_code == 2
    assert refused.output.strip() == ("error: --retry-errors runs a resumed job's error rows again; add --resume "
                                      "(or drop --retry-errors).")


def test_a_resume_that_keeps_earlier_error_rows_says_so_and_exits_1(model, photos, tmp_path):
    """Nothing fails anew, but the corrupt file's error row is still in the results (same bytes: skipped):
    the summary counts it and the exit code stays the one of a run with errors, until --retry-errors."""
    root = tmp_path / "in"
    root.mkdir()
    for i, path in enumerate(sorted(photos.rglob("*.png"))[:2]):
        (root / f"{i}.png").write_bytes(path.read_bytes())
    (root / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert explain(model, str(root), "--out", str(out)).exit_code == 1
    result = explain(model, str(root), "--out", str(out), "--resume")
    assert result.exit_code == 1
    assert result.stdout.strip().splitlines()[-1] == (
        f"3 images: 0 written, 3 already done, 1 earlier error kept (rerun them with --retry-errors; exit code 1) "
        f"-> {out}")
    assert [x for x in result.stderr.strip().splitlines() if not x.startswith("warning:")] == []
    (root / "broken.png").write_bytes((root / "0.png").read_bytes())   # fixed: its row is replaced, none kept
    fixed = explain(model, str(root), "--out", str(out), "--resume")
    assert fixed.exit_code == 0, fixed.output
    assert fixed.stdout.strip().splitlines()[-1] == f"3 images: 1 written, 2 already done -> {out}"


def test_two_shards_make_the_whole(model, photos, tmp_path):
    assert explain(model, str(photos), "--out", str(tmp_path / "whole"), "--no-overlays").exit_code == 0
    shards = []
    for i in (0, 1):
        result = explain(model, str(photos), "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2", "--no-overlays")
        assert result.exit_code == 0, result.output
        shards.append(rows(tmp_path / f"s{i}"))
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert {**shards[0], **shards[1]} == rows(tmp_path / "whole")


def test_no_overlays_writes_no_png(model, photos, tmp_path):
    result = explain(model, str(photos), "--out", str(tmp_path), "--no-overlays", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.rglob("*.png")) and not list(tmp_path.rglob("*.npy"))
    assert len(read_maps(tmp_path)) == 7 and all(v.shape == (32, 32) for v in read_maps(tmp_path).values())
    explanation = json.loads((tmp_path / "explain.json").read_text())["explanations"][0]
    assert explanation["files"] == {} and explanation["map_key"].startswith("a/0.png::grad-cam::")


@pytest.mark.parametrize("shard, message", [
    ("2", "error: Shard '2' is not I/N; write e.g. --shard 0/4 for the first of four."),
    ("one/two", "error: Shard 'one/two' is not I/N; write e.g. --shard 0/4 for the first of four."),
    ("3/2", "error: Shard 3/2 does not exist; use 0 <= I < N (e.g. 0/2)."),
])
def test_bad_shard_is_one_sentence_and_exit_2(model, photos, tmp_path, shard, message):
    result = explain(model, str(photos), "--out", str(tmp_path / "out"), "--shard", shard)
    assert result.exit_code == 2 and result.output.strip() == message
    assert not (tmp_path / "out").exists()


def test_actors_without_ray_is_refused(model, photos, tmp_path):
    result = explain(model, str(photos), "--out", str(tmp_path / "out"), "--actors", "2")
    assert result.exit_code == 2
    assert result.output.strip() == "error: --actors sets the number of Ray actors; add --ray (or drop --actors)."


def test_an_error_that_does_not_name_its_file_keeps_the_name_before_it(capsys):
    from onnxplain.cli.jobs import ErrorRows
    ErrorRows(0)([{"path": "a/0.png", "source": "/data/a/0.png", "error": "Class 'zebra' is not a label; use ..."},
                  {"path": "a/1.png", "source": "/data/a/1.png", "error": "Image file '/data/a/1.png' cannot be read."},
                  {"path": "a/2.png", "source": "/data/a/2.png", "error": None}])
    assert capsys.readouterr().err.splitlines() == [
        "failed: a/0.png: Class 'zebra' is not a label; use ...", "failed: Image file '/data/a/1.png' cannot be read."]


# ---- features embed -----------------------------------------------------------------------------------
def test_features_embed_streams_a_folder_and_matches_the_api(model, photos, tmp_path):
    from onnxplain import Explainer
    from onnxplain.features import Embedding, embed
    root = tmp_path / "in"
    for path in sorted(photos.rglob("*.png")):
        (root / path.relative_to(photos)).parent.mkdir(parents=True, exist_ok=True)
        (root / path.relative_to(photos)).write_bytes(path.read_bytes())
    (root / "b" / "zz.png").write_bytes(b"")
    out = tmp_path / "emb" / "vectors.npy"
    result = CliRunner().invoke(main, ["--quiet", "features", "embed", model, str(root), "--out", str(out),
                                       "--preset", "raw01", "--flush-every", "3"])
    assert result.exit_code == 1   # the empty file failed
    assert result.stderr.strip() == (f"failed: Image file '{root / 'b' / 'zz.png'}' could not be decoded "
                                     "as an image; use a format opencv reads (PNG, JPEG, ...).")
    assert result.stdout.strip().splitlines()[0].startswith("7 x 8 at ")   # 7 vectors of conv2's 8 channels
    loaded = Embedding.load(out)
    expected = embed(Explainer(model, preprocess="raw01", quiet=True), sorted(str(p) for p in root.rglob("*.png")
                                                                             if p.name != "zz.png"))
    order = [expected.names.index(n) for n in loaded.names]
    np.testing.assert_allclose(loaded.vectors, expected.vectors[order], rtol=1e-5, atol=1e-6)
    assert loaded.layer == expected.layer and loaded.predicted == [expected.predicted[i] for i in order]
    assert (tmp_path / "emb" / "vectors" / "results.parquet").is_file()


# ---- audit ----------------------------------------------------------------------------------------------
def test_audit_defaults_are_the_audit_options():
    from onnxplain.audit import AuditOptions
    from onnxplain.cli.audit import audit_command
    defaults = {p.name: p.default for p in audit_command.params}
    assert (defaults["sanity_images"], defaults["sanity_steps"]) == (AuditOptions.sanity_images,
                                                                     AuditOptions.sanity_steps) == (1, 2)


def test_audit_reads_a_manifest_and_prints_its_plan_first(model, photos, tmp_path, monkeypatch):
    manifest = photos / "some.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": p}) for p in ("a/0.png", "b/1.png")) + "\n")
    out = tmp_path / "audit"
    result = CliRunner().invoke(main, ["audit", model, str(manifest), "--methods", "eigen-cam", "--preset",
                                       "raw01", "--steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0].startswith("audit plan: 2 images, ")
    report = json.loads((out / "audit.json").read_text())
    assert [r["image"] for r in report["images"]] == ["a/0.png", "b/1.png"]   # relative to the manifest's folder
    quiet = CliRunner().invoke(main, ["--quiet", "audit", model, str(manifest), "--methods", "eigen-cam",
                                      "--preset", "raw01", "--steps", "4", "--out", str(out), "--no-sanity"])
    assert quiet.exit_code == 0 and "audit plan" not in quiet.stderr


# ---- Ray ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_ray_gives_the_in_process_rows(model, photos, tmp_path, local_ray):
    result = explain(model, str(photos), "--out", str(tmp_path / "ray"), "--ray", "--actors", "2", "--maps", "raw")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == f"7 images: 7 written, 0 already done -> {tmp_path / 'ray'}"
    assert explain(model, str(photos), "--out", str(tmp_path / "local"), "--no-overlays",
                   "--maps", "raw").exit_code == 0
    on_ray, local = rows(tmp_path / "ray"), rows(tmp_path / "local")
    assert on_ray.keys() == local.keys()
    for path in local:
        for key in ("hash", "params_hash", "target", "width", "height", "error"):
            assert on_ray[path][key] == local[path][key]
        assert [p["index"] for p in on_ray[path]["predictions"]] == [p["index"] for p in local[path]["predictions"]]
        for a, b in zip(on_ray[path]["explanations"], local[path]["explanations"]):
            assert (a["map_key"], a["peak_x"], a["peak_y"]) == (b["map_key"], b["peak_x"], b["peak_y"])
            assert a["peak"] == pytest.approx(b["peak"], rel=1e-5)
    ray_maps, local_maps = read_maps(tmp_path / "ray"), read_maps(tmp_path / "local")
    assert ray_maps.keys() == local_maps.keys()
    for key in local_maps:
        np.testing.assert_allclose(ray_maps[key].astype(np.float32), local_maps[key].astype(np.float32),
                                   atol=2e-3 * max(float(np.abs(local_maps[key]).max()), 1e-6))
    again = explain(model, str(photos), "--out", str(tmp_path / "ray"), "--ray", "--actors", "2", "--maps", "raw",
                    "--resume")
    assert again.stdout.strip().splitlines()[-1] == f"7 images: 0 written, 7 already done -> {tmp_path / 'ray'}"
    drawn = explain(model, str(photos), "--out", str(tmp_path / "x"), "--ray", "--actors", "1", "--overlays")
    assert drawn.exit_code == 0, drawn.output   # the actors write the in-process overlay files
    assert explain(model, str(photos), "--out", str(tmp_path / "y")).exit_code == 0

    def overlays(out: Path) -> list[str]:
        return sorted(p.relative_to(out).as_posix() for p in (out / "overlays").rglob("*") if p.is_file())
    assert len(overlays(tmp_path / "y")) >= 21 and overlays(tmp_path / "x") == overlays(tmp_path / "y")
