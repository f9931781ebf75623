"""Batch jobs: inputs and names, streaming store, resume after a kill, shards, error rows, flat memory, Ray parity."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from helpers import RegionNet, export, random_images, region_class_images
from onnxplain.errors import UserError
from onnxplain.jobs import JobSpec, list_inputs, read_maps, read_results, run_job
from onnxplain.jobs.ray_runner import plan_actors

REPO = Path(__file__).resolve().parents[2]
OCCLUSION = {"occlusion": {"window": 8, "stride": 8}}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(export(RegionNet(), tmp_path_factory.mktemp("jobs") / "region.onnx"))


def write_images(folder: Path, count: int, size: int = 32, seed: int = 0) -> list[Path]:
    """`count` PNGs spread over two sub-folders with clashing file names (a/0.png and b/0.png); the first three
    are RegionNet's class images, so their maps are not constant."""
    images = list(region_class_images()) + random_images(max(0, count - 3), size, seed)
    paths = []
    for i, image in enumerate(images[:count]):
        path = folder / ("a" if i % 2 else "b") / f"{i // 2}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image[:, :, ::-1])
        paths.append(path)
    return paths


def spec_for(model: str, **kwargs) -> JobSpec:
    settings = dict(methods=("grad-cam", "occlusion"), preset="raw01", batch_size=4, params=OCCLUSION)
    return JobSpec(model, **{**settings, **kwargs})


def rows_by_path(table) -> dict[str, dict]:
    """Result rows keyed by path, without the timing (the one column that may differ between runs)."""
    return {r["path"]: {k: v for k, v in r.items() if k != "seconds"} for r in table.to_pylist()}


def assert_same(a, b, rtol: float = 1e-5, path: str = "") -> None:
    """Rows equal in every field, floats to `rtol` (a batch of other images may change the last bits of a
    float32 result), everything else exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], rtol, f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, rtol, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=rtol, abs=1e-7), path
    else:
        assert a == b, path


def assert_same_maps(a: dict, b: dict, count: int) -> None:
    """The same keys, values within one float16 step of the map's scale (2e-3 of its largest value)."""
    assert len(a) == count and a.keys() == b.keys()
    for key in a:
        scale = max(float(np.abs(a[key].astype(np.float32)).max()), 1e-6)
        np.testing.assert_allclose(a[key].astype(np.float32), b[key].astype(np.float32), atol=2e-3 * scale, err_msg=key)


# ---- inputs ---------------------------------------------------------------------------------------
def test_names_come_from_relative_paths_and_never_collide(tmp_path):
    paths = write_images(tmp_path / "imgs", 4)
    names = [item.name for item in list_inputs(tmp_path / "imgs")]
    assert names == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert [i.name for i in list_inputs([str(p) for p in paths])] == ["b/0.png", "a/0.png", "b/1.png", "a/1.png"]
    assert [i.name for i in list_inputs(str(paths[0]))] == ["0.png"]
    other = tmp_path / "x" / "b" / "0.png"
    other.parent.mkdir(parents=True)
    other.write_bytes(paths[0].read_bytes())
    (tmp_path / "m.csv").write_text(f"path\nimgs/b/0.png\n{other}\n")
    assert [i.name for i in list_inputs(tmp_path / "m.csv")] == ["imgs/b/0.png", "x/b/0.png"]


def test_manifests_csv_jsonl_parquet_carry_per_row_targets(tmp_path, model):
    import pyarrow as pa
    import pyarrow.parquet as pq
    write_images(tmp_path / "imgs", 3)
    rows = [{"path": "imgs/b/0.png", "target": 2}, {"path": "imgs/a/0.png", "target": None},
            {"path": "imgs/b/1.png", "target": 0}]
    (tmp_path / "m.csv").write_text("path,target\nimgs/b/0.png,2\nimgs/a/0.png,\nimgs/b/1.png,0\n")
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    for kind in ("csv", "jsonl", "parquet"):
        items = list_inputs(tmp_path / f"m.{kind}")
        assert [(i.name, i.target) for i in items] == [("imgs/b/0.png", 2), ("imgs/a/0.png", None),
                                                      ("imgs/b/1.png", 0)], kind
    run_job(spec_for(model, target=1), tmp_path / "m.jsonl", tmp_path / "out")
    got = {r["path"]: [e["target_index"] for e in r["explanations"]] for r in read_results(tmp_path / "out").to_pylist()}
    assert got == {"imgs/b/0.png": [2, 2], "imgs/a/0.png": [1, 1], "imgs/b/1.png": [0, 0]}


def test_bad_inputs_are_one_sentence(tmp_path):
    (tmp_path / "m.csv").write_text("file\nx.png\n")
    with pytest.raises(UserError, match="^Manifest '.*m.csv' has no 'path' column"):
        list_inputs(tmp_path / "m.csv")
    with pytest.raises(UserError, match=r"^Input '.*nowhere' does not exist; pass a folder of images"):
        list_inputs(tmp_path / "nowhere")
    from onnxplain.jobs import check_shard
    assert check_shard("1/4") == (1, 4)
    with pytest.raises(UserError, match=r"^Shard 4/4 does not exist; use 0 <= I < N"):
        check_shard("4/4")
    with pytest.raises(UserError, match="^Shard 'x' is not I/N"):
        check_shard("x")


# ---- the streaming job ------------------------------------------------------------------------------
def test_a_bad_image_is_an_error_row_and_the_run_goes_on(tmp_path, model):
    write_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "a" / "broken.jpg").write_bytes(b"not an image")
    report = run_job(spec_for(model), tmp_path / "imgs", tmp_path / "out", flush_every=2)
    assert (report.total, report.done, report.errors) == (6, 6, 1)
    rows = rows_by_path(read_results(tmp_path / "out"))
    assert rows["a/broken.jpg"]["error"] == (f"Image file '{tmp_path / 'imgs' / 'a' / 'broken.jpg'}' could not be "
                                             "decoded as an image; use a format opencv reads (PNG, JPEG, ...).")
    assert rows["a/broken.jpg"]["explanations"] == [] and rows["a/broken.jpg"]["predictions"] == []
    good = [r for r in rows.values() if r["error"] is None]
    assert len(good) == 5 and all(len(r["explanations"]) == 2 and len(r["predictions"]) == 3 for r in good)
    maps = read_maps(tmp_path / "out")
    assert len(maps) == 10 and all(m.dtype == np.float16 and m.shape == (32, 32) for m in maps.values())


def test_results_match_the_explainer_one_image_at_a_time(tmp_path, model):
    """What the job stores is what Explainer.explain gives for the same image (float16 rounding: 1e-3 rel.)."""
    from onnxplain.explainer import Explainer
    paths = write_images(tmp_path / "imgs", 3)
    run_job(spec_for(model, methods=("grad-cam++",)), tmp_path / "imgs", tmp_path / "out")
    rows, maps = rows_by_path(read_results(tmp_path / "out")), read_maps(tmp_path / "out")
    explainer = Explainer(model, preprocess="raw01", quiet=True)
    for path in paths:
        name = path.relative_to(tmp_path / "imgs").as_posix()
        [a] = explainer.explain([str(path)], method="grad-cam++")
        entry = rows[name]["explanations"][0]
        np.testing.assert_allclose(maps[entry["map_key"]], a.upsampled, rtol=1e-3, atol=1e-3 * a.upsampled.max())
        assert entry["target_index"] == a.target["index"] == rows[name]["predictions"][0]["index"]
        assert (entry["peak_y"], entry["peak_x"]) == np.unravel_index(np.argmax(a.heatmap), a.heatmap.shape)
        assert entry["warning"] is None and 0.1 < entry["mass"] <= 1.0


def test_the_union_of_shards_equals_the_whole(tmp_path, model):
    write_images(tmp_path / "imgs", 12)
    spec = spec_for(model)
    run_job(spec, tmp_path / "imgs", tmp_path / "whole")
    whole = rows_by_path(read_results(tmp_path / "whole"))
    parts, maps = {}, {}
    for i in range(3):
        run_job(spec, tmp_path / "imgs", tmp_path / f"s{i}", shard=f"{i}/3")
        rows = rows_by_path(read_results(tmp_path / f"s{i}"))
        assert rows and not set(rows) & set(parts)  # shards are disjoint and none is empty here
        parts.update(rows)
        maps.update(read_maps(tmp_path / f"s{i}"))
    assert_same(parts, whole)
    assert_same_maps(maps, read_maps(tmp_path / "whole"), 24)


KILLED_JOB = """
import sys, time
from onnxplain.jobs import JobSpec, run_job
spec = JobSpec(sys.argv[1], methods=("grad-cam", "occlusion"), preset="raw01", batch_size=4,
               params={"occlusion": {"window": 8, "stride": 8}})
run_job(spec, sys.argv[2], sys.argv[3], flush_every=4, threads=1, on_flush=lambda n: time.sleep(0.3))
"""


def test_a_killed_job_resumed_ends_complete_and_identical(tmp_path, model):
    write_images(tmp_path / "imgs", 48)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "converters")])}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_JOB), model, str(tmp_path / "imgs"),
                              str(out)], env=env)
    deadline = time.time() + 120
    while len(list((out / "parts").glob("part-*.parquet"))) < 3 and time.time() < deadline and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = len(list((out / "parts").glob("part-*.parquet")))
    assert 3 <= written < 12 and not (out / "results.parquet").exists()  # killed midway: 12 parts make the whole
    report = run_job(spec_for(model), tmp_path / "imgs", out, resume=True, flush_every=4)
    assert report.skipped == 4 * written and report.done == 48 - 4 * written
    run_job(spec_for(model), tmp_path / "imgs", tmp_path / "straight", flush_every=4)
    resumed, straight = read_results(out), read_results(tmp_path / "straight")
    assert resumed.num_rows == straight.num_rows == 48
    assert rows_by_path(resumed) == rows_by_path(straight)
    a, b = read_maps(out), read_maps(tmp_path / "straight")
    assert len(a) == 96 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    again = run_job(spec_for(model), tmp_path / "imgs", out, resume=True)
    assert (again.skipped, again.done) == (48, 0)


def test_resume_with_other_parameters_is_refused(tmp_path, model):
    write_images(tmp_path / "imgs", 2)
    run_job(spec_for(model), tmp_path / "imgs", tmp_path / "out")
    with pytest.raises(UserError, match="holds a job run with other parameters; resume it with the same model"):
        run_job(spec_for(model, top=2), tmp_path / "imgs", tmp_path / "out", resume=True)


def test_threads_reach_onnxruntime_sessions(model):
    from onnxplain.jobs.work import build_explainer
    explainer = build_explainer(spec_for(model), threads=1)
    session = explainer.runtime.session(explainer.runtime.output_names)
    assert session.get_session_options().intra_op_num_threads == 1


def test_memory_stays_flat_over_2000_images(tmp_path, model):
    """Python-heap memory (tracemalloc: numpy buffers included) after each flush of 100 images: the rise
    from image 500 to image 2000 stays under 1 MB (keeping every map or row would add about 6 MB)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(random_images(2000, size=32, seed=1)):
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
    samples = []
    tracemalloc.start()
    try:
        run_job(spec_for(model, methods=("grad-cam",), batch_size=50), folder, tmp_path / "out", flush_every=100,
                on_flush=lambda n: samples.append(tracemalloc.get_traced_memory()[0]))
    finally:
        tracemalloc.stop()
    assert len(samples) == 20
    assert max(samples[5:]) - samples[4] < 1e6, [round(s / 1e6, 2) for s in samples]
    assert read_results(tmp_path / "out").num_rows == 2000


# ---- Ray -----------------------------------------------------------------------------------------
def test_plan_actors_leaves_room_for_ray_datas_tasks():
    assert plan_actors(2) == plan_actors(2, actors=1) and plan_actors(2).actors == 1
    assert (plan_actors(2).cpus, plan_actors(2).threads) == (1.5, 2)
    two = plan_actors(2, actors=2)
    assert (two.cpus, two.threads, two.gpus) == (0.75, 1, 0.0)
    assert plan_actors(32, 4) == plan_actors(32, 4, actors=4) and plan_actors(32, 4).gpus == 1.0
    assert plan_actors(17).actors == 4
    with pytest.raises(UserError, match=r"^2 actors of 1 CPUs leave Ray Data no CPU for its own tasks"):
        plan_actors(2, actors=2, cpus_per_actor=1)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_same_results_as_the_in_process_job(tmp_path, model, local_ray):
    from onnxplain.jobs import run_ray
    write_images(tmp_path / "imgs", 40)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"broken")
    spec = spec_for(model, batch_size=8)
    run_job(spec, tmp_path / "imgs", tmp_path / "local")
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=2)
    local, ray_rows = rows_by_path(read_results(tmp_path / "local")), rows_by_path(read_results(tmp_path / "ray"))
    assert len(ray_rows) == 41
    assert_same(ray_rows, local)
    assert_same_maps(read_maps(tmp_path / "ray"), read_maps(tmp_path / "local"), 80)


def test_resume_recomputes_a_file_replaced_at_the_same_path_on_both_runners(tmp_path, model, local_ray):
    """One rule (store.resume_state): same path, same content hash, same parameters; a file rewritten in place
    runs again on resume, in process and on Ray (its earlier row dropped), and the unchanged ones are skipped."""
    from onnxplain.jobs.inputs import content_hash
    from onnxplain.jobs.ray_runner import pending, run_ray
    paths = write_images(tmp_path / "imgs", 6)
    spec = spec_for(model, batch_size=2)
    run_job(spec, tmp_path / "imgs", tmp_path / "local")
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=1)
    items = list_inputs(tmp_path / "imgs")
    assert pending(items, tmp_path / "ray", spec.params_hash()) == ([], set())
    before = paths[5].read_bytes()
    cv2.imwrite(str(paths[5]), random_images(1, 32, seed=11)[0][:, :, ::-1])   # a/2.png, same path
    new = content_hash(paths[5].read_bytes())
    assert new != content_hash(before)
    todo, stale = pending(items, tmp_path / "ray", spec.params_hash())
    assert ([i.name for i in todo], stale) == (["a/2.png"], {("a/2.png", content_hash(before))})
    report = run_job(spec, tmp_path / "imgs", tmp_path / "local", resume=True)
    assert (report.total, report.done, report.skipped) == (6, 1, 5)
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=1, resume=True)
    for out in ("local", "ray"):
        found = read_results(tmp_path / out).to_pylist()
        assert sorted(r["path"] for r in found) == sorted(i.name for i in items), out   # one row per image
        assert [r["hash"] for r in found if r["path"] == "a/2.png"] == [new], out    # recomputed, old row gone
    fresh = [{k: v for k, v in r.items() if k not in ("seconds", "source")}
             for out in ("local", "ray") for r in read_results(tmp_path / out).to_pylist() if r["hash"] == new]
    assert len(fresh) == 2
    assert_same(fresh[0], fresh[1])
    assert pending(items, tmp_path / "ray", spec.params_hash()) == ([], set())
    from onnxplain.jobs import iter_maps
    assert len(list(iter_maps(tmp_path / "local"))) == 12   # the replaced image's old maps left its shard
    assert_same_maps(read_maps(tmp_path / "local"), read_maps(tmp_path / "ray"), 12)


def test_resume_replaces_error_rows_and_retries_unreadable_files_on_both_runners(tmp_path, model, local_ray):
    """An unreadable file (no content hash) runs again on every resume, an undecodable one only with
    retry_errors (same bytes, same settings: the same error), and each replaces its earlier row: one row per
    image after any number of resumes, in process and on Ray, and the same rows on both."""
    from onnxplain.jobs.inputs import content_hash
    from onnxplain.jobs.ray_runner import pending, run_ray
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"broken")
    (tmp_path / "m.csv").write_text("path\nimgs/b/0.png\nimgs/a/0.png\nimgs/b/1.png\nimgs/broken.png\nimgs/gone.png\n")
    manifest, spec, gone = tmp_path / "m.csv", spec_for(model, batch_size=2), tmp_path / "imgs" / "gone.png"
    names = ["imgs/a/0.png", "imgs/b/0.png", "imgs/b/1.png", "imgs/broken.png", "imgs/gone.png"]
    runs = {"local": lambda **kw: run_job(spec, manifest, tmp_path / "local", **kw),
            "ray": lambda **kw: run_ray(spec, manifest, tmp_path / "ray", actors=1, **kw)}

    def rows(out: str) -> dict[str, dict]:
        found = read_results(tmp_path / out).to_pylist()
        assert sorted(r["path"] for r in found) == names, out   # one row per image
        return {r["path"]: r for r in found}
    for out, run in runs.items():
        run()
        run(resume=True)
        found = rows(out)
        assert (found["imgs/gone.png"]["error"], found["imgs/gone.png"]["hash"]) == (
            f"Image file '{gone}' cannot be read.", "")
        assert found["imgs/broken.png"]["hash"] == content_hash(b"broken") and found["imgs/broken.png"]["error"]
    items = list_inputs(manifest)
    todo, stale = pending(items, tmp_path / "ray", spec.params_hash())
    assert ([i.name for i in todo], stale) == (["imgs/gone.png"], {("imgs/gone.png", "")})
    todo, stale = pending(items, tmp_path / "ray", spec.params_hash(), retry_errors=True)
    assert ([i.name for i in todo], stale) == (["imgs/broken.png", "imgs/gone.png"],
                                               {("imgs/gone.png", ""), ("imgs/broken.png", content_hash(b"broken"))})
    report = run_job(spec, manifest, tmp_path / "local", resume=True)
    assert (report.done, report.skipped, report.errors) == (1, 4, 1)
    gone.write_bytes((tmp_path / "imgs" / "a" / "0.png").read_bytes())   # the missing file arrives
    report = run_job(spec, manifest, tmp_path / "local", resume=True, retry_errors=True)
    assert (report.done, report.skipped, report.errors) == (2, 3, 1)
    run_ray(spec, manifest, tmp_path / "ray", actors=1, resume=True, retry_errors=True)
    local, on_ray = rows("local"), rows("ray")
    arrived = on_ray["imgs/gone.png"]
    assert arrived["error"] is None and arrived["hash"] == on_ray["imgs/a/0.png"]["hash"]
    assert_same(*({p: {k: v for k, v in r.items() if k != "seconds"} for p, r in t.items()} for t in (on_ray, local)))
    assert pending(items, tmp_path / "ray", spec.params_hash()) == ([], set())
    assert len(read_maps(tmp_path / "local")) == len(read_maps(tmp_path / "ray")) == 8   # 4 images, 2 methods


def channel_model(folder: Path) -> str:
    """A 3-class model whose class is the image's brightest channel (a 1x1 identity conv, relu, mean)."""
    import torch

    class ChannelNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            with torch.no_grad():
                self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
                self.conv.bias.zero_()

        def forward(self, x):
            return torch.relu(self.conv(x)).mean(dim=(2, 3))
    return str(export(ChannelNet().eval(), folder / "channel.onnx"))


def test_a_replaced_image_whose_class_changed_leaves_no_overlay_of_its_old_class(tmp_path, local_ray):
    """The overlay files are named by the predicted class: on resume, a replaced image's old files go with its
    old row (store.drop_rows), on both runners; the folder then holds what a fresh run of the new files writes."""
    from onnxplain.jobs import run_ray
    images = random_images(3, 32, seed=3)
    for i, channel in enumerate((0, 1, 0)):   # RGB: red, green, red
        images[i][..., channel] = 255
        (tmp_path / "imgs").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), images[i][:, :, ::-1])
    spec = JobSpec(channel_model(tmp_path), methods=("grad-cam",), preset="raw01", overlays=True, batch_size=2)
    run_job(spec, tmp_path / "imgs", tmp_path / "local")
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=1)

    def files(out: str, prefix: str = "") -> list[str]:
        found = (p.relative_to(tmp_path / out).as_posix() for p in (tmp_path / out / "overlays").rglob("*"))
        return sorted(f for f in found if f.startswith("overlays/" + prefix))
    kinds = ("npy", "png", "raw.npy", "valid.npy")
    old = files("local", "0.png.")
    assert old == [f"overlays/0.png.grad-cam.0.{kind}" for kind in kinds] and files("ray") == files("local")
    (tmp_path / "imgs" / "0.png").write_bytes((tmp_path / "imgs" / "1.png").read_bytes())   # now green: class 1
    run_job(spec, tmp_path / "imgs", tmp_path / "local", resume=True)
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=1, resume=True)
    run_job(spec, tmp_path / "imgs", tmp_path / "fresh")
    assert files("local", "0.png.") == [f"overlays/0.png.grad-cam.1.{kind}" for kind in kinds]
    assert files("local") == files("ray") == files("fresh") and len(files("fresh")) == 12
    assert_same(rows_by_path(read_results(tmp_path / "local")), rows_by_path(read_results(tmp_path / "fresh")))


def test_a_ray_job_uses_the_current_map_batches_api(tmp_path, model, local_ray):
    """No deprecation from Ray Data (`concurrency=` is deprecated since Ray 2.51: the pool is `compute=`),
    neither as a Python warning nor in the `ray.data` log, which does not propagate to the root logger."""
    import logging
    import warnings
    from onnxplain.jobs import run_ray
    write_images(tmp_path / "imgs", 2)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("ray.data")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_ray(spec_for(model, batch_size=2), tmp_path / "imgs", tmp_path / "ray", actors=1)
    finally:
        logger.removeHandler(handler)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    assert records and not [m for m in said if "deprecat" in m.lower()], said   # the log was heard, said nothing
    assert read_results(tmp_path / "ray").num_rows == 2


def test_ray_writes_the_in_process_overlay_files_with_occlusions_panels(tmp_path, model, local_ray):
    """overlays=True on Ray goes through the in-process writer (Attribution.save): the same files, occlusion's
    class-map and per-window activation panels included, and the same rows (overlay paths too)."""
    from onnxplain.jobs import run_ray
    write_images(tmp_path / "imgs", 3)
    params = {"occlusion": {"window": 8, "stride": 8, "class_map": True, "activation_layer": "auto"}}
    spec = spec_for(model, methods=("occlusion",), params=params, overlays=True, batch_size=2)
    run_job(spec, tmp_path / "imgs", tmp_path / "local")
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=1)

    def files(out: Path) -> list[str]:
        return sorted(p.relative_to(out).as_posix() for p in (out / "overlays").rglob("*") if p.is_file())
    local = files(tmp_path / "local")
    assert {f.split(".", 4)[-1] for f in local} == {
        "png", "npy", "raw.npy", "valid.npy", "class_map.png", "drops.png", "layer_activation.png",
        "channel_activation.png"}, local
    assert files(tmp_path / "ray") == local
    ray_rows = rows_by_path(read_results(tmp_path / "ray"))
    local_rows = rows_by_path(read_results(tmp_path / "local"))
    assert_same(ray_rows, local_rows)
    assert {e["overlay"] for r in ray_rows.values() for e in r["explanations"]} == {
        f for f in local if f.count(".") == 4 and f.endswith(".png")}


def test_an_embed_job_stores_the_vectors_features_embed_gives(tmp_path, model):
    from onnxplain.explainer import Explainer
    from onnxplain.features.embed import embed
    write_images(tmp_path / "imgs", 5)
    run_job(JobSpec(model, methods=(), embed="auto", preset="raw01", batch_size=2), tmp_path / "imgs", tmp_path / "out")
    stored = read_maps(tmp_path / "out")
    reference = embed(Explainer(model, preprocess="raw01", quiet=True), str(tmp_path / "imgs"))
    layer = reference.layer
    assert len(stored) == 5
    for name, vector in zip(reference.names, reference.vectors):
        relative = Path(name).resolve().relative_to((tmp_path / "imgs").resolve()).as_posix() \
            if Path(name).is_absolute() else name
        np.testing.assert_allclose(stored[f"{relative}::embed::{layer}"], vector, rtol=1e-5, atol=1e-7)


def test_resuming_a_ray_folder_with_other_settings_is_refused_like_in_process(tmp_path, model, local_ray):
    """A Ray folder keeps its settings in job.json, checked as the in-process store checks them: a resume with
    another method's parameters is the same one sentence and leaves the folder's one row per image."""
    import re
    from onnxplain.jobs import run_ray
    write_images(tmp_path / "imgs", 2)
    spec = spec_for(model, batch_size=2)
    other = spec_for(model, batch_size=2, params={"occlusion": {"window": 16, "stride": 16}})
    assert other.params_hash() != spec.params_hash()
    run_job(spec, tmp_path / "imgs", tmp_path / "local")
    run_ray(spec, tmp_path / "imgs", tmp_path / "ray", actors=1)
    assert json.loads((tmp_path / "ray" / "job.json").read_text())["params_hash"] == spec.params_hash()
    for out, runner in ((tmp_path / "local", run_job), (tmp_path / "ray", run_ray)):
        sentence = (f"'{out}' holds a job run with other parameters; resume it with the same model and settings, "
                    "or write to another folder.")
        with pytest.raises(UserError, match=f"^{re.escape(sentence)}$"):
            runner(other, tmp_path / "imgs", out, resume=True)
    assert sorted(r["path"] for r in read_results(tmp_path / "ray").to_pylist()) == ["a/0.png", "b/0.png"]
