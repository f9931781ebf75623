"""Engines, devices and batch sizes: engine torch gives onnxruntime's answers; device errors say why and what
to do; the engine switch when onnxruntime lacks CUDA; batch sizes from (fake) free memory.

Tolerance of engine parity: every forward-only method's raw map within 1e-4 of the ort map's largest
magnitude (measured: at most 1.4e-5, EfficientNet-Lite0 occlusion). No GPU is needed here: CUDA set-ups are
faked by monkeypatching what the probes report.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import helpers
import onnxplain.devices as devices_module
import onnxplain.memory as memory_module
from onnxplain import Explainer
from onnxplain.cli import main
from onnxplain.errors import DeviceError
from onnxplain.methods import list_methods
from onnxplain.model import Model
from onnxplain.devices import DevicePlan, cuda_problem, plan_devices, torch_cuda_problem
from onnxplain.memory import HEADROOM, SAFETY, auto_batch_size, available_ram, per_image_bytes
from onnxplain.runtime import Runtime, TorchRuntime, run_bound

ORT_METHODS = [m["name"] for m in list_methods() if m["engine"] == "ort"]
REGION_PARAMS = {"rise": {"n": 200}, "score-cam": {"channels": 32}, "smoothgrad-fd": {"n": 32},
                 "occlusion": {"window": 8, "stride": 8}}
# EfficientNet-Lite0: torch's CPU forward is several times slower than onnxruntime's on a 2-core CI machine, so
# rise and smoothgrad-fd use fewer images than on RegionNet (n 64 and 16); every method runs its whole code path.
EFFNET_PARAMS = {"rise": {"n": 64}, "score-cam": {"channels": 32}, "smoothgrad-fd": {"n": 16},
                 "occlusion": {"window": 32, "stride": 32}}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(float(np.abs(b).max()), 1e-12))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread: on a busy 2-core CI machine torch's spinning thread pool made CPU forwards 10-100x
    slower; the maps do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def region_pair(region_model):
    return (Explainer(region_model, preprocess="raw01", device="cpu", quiet=True),
            Explainer(region_model, preprocess="raw01", device="cpu", quiet=True, engine="torch"))


@pytest.fixture(scope="module")
def effnet_pair(effnet):
    return (Explainer(effnet, device="cpu", quiet=True), Explainer(effnet, device="cpu", quiet=True, engine="torch"))


@pytest.fixture
def fresh_probes():
    """Clear the cached CUDA probe before and after a test that fakes what it sees."""
    cuda_problem.cache_clear()
    yield
    cuda_problem.cache_clear()


# ---- engine torch equals engine ort ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ORT_METHODS)
def test_engine_torch_equals_ort_on_region_net(method, region_pair):
    ort_ex, torch_ex = region_pair
    images = helpers.random_images(2, seed=5)
    params = REGION_PARAMS.get(method, {})
    for a, b in zip(ort_ex.explain(images, method=method, target=1, **params),
                    torch_ex.explain(images, method=method, target=1, **params)):
        assert rel_err(b.raw, a.raw) <= 1e-4, method


@pytest.mark.parametrize("method", ORT_METHODS)
def test_engine_torch_equals_ort_on_effnet_photo(method, effnet_pair):
    ort_ex, torch_ex = effnet_pair
    photo = str(Path(__file__).resolve().parents[2] / "models" / "chelsea.jpg")
    params = EFFNET_PARAMS.get(method, {})
    [a] = ort_ex.explain(photo, method=method, **params)
    [b] = torch_ex.explain(photo, method=method, **params)
    assert a.target == b.target
    assert rel_err(b.raw, a.raw) <= 1e-4, method


def test_torch_runtimes_have_the_runtime_interface(region_pair):
    """The model's runtime and a tail's: same names, batch size and forward count as onnxruntime's, same values
    (relative 1e-5), layers tapped by name and the tail fed its cut tensor plus crossing tensors."""
    ort_ex, torch_ex = region_pair
    assert isinstance(torch_ex.runtime, TorchRuntime) and torch_ex.engine == "torch" and torch_ex.device == "cpu"
    layer = ort_ex.model.auto_layer()[0]
    x = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    for a, b in ((ort_ex.runtime, torch_ex.runtime), (ort_ex.tail(layer)[1], torch_ex.tail(layer)[1])):
        assert (a.input_names, a.output_names, a.fixed_batch, a.device) == \
            (b.input_names, b.output_names, b.fixed_batch, b.device)
    before = torch_ex.runtime.forwards
    want, got = ort_ex.runtime.run(x, ["scores", layer]), torch_ex.runtime.run(x, ["scores", layer])
    assert torch_ex.runtime.forwards - before == 5
    for name in ("scores", layer):
        assert got[name].dtype == want[name].dtype and rel_err(got[name], want[name]) < 1e-5
    cut, tail = torch_ex.tail(layer)
    assert isinstance(tail, TorchRuntime) and tail.input_names == [cut.at, *cut.crossing]
    feeds = {cut.at: want[layer] * 0.5}
    assert rel_err(tail.run(feeds)["scores"], ort_ex.tail(layer)[1].run(feeds)["scores"]) < 1e-5


def test_cli_explain_takes_engine(region_model, tmp_path):
    image = tmp_path / "a.png"
    import cv2
    cv2.imwrite(str(image), helpers.random_images(1)[0])
    runner = CliRunner()
    assert "--engine" in runner.invoke(main, ["explain", "--help"]).output
    outs = {}
    for engine in ("ort", "torch"):
        result = runner.invoke(main, ["explain", str(region_model), str(image), "-m", "score-cam", "--preset", "raw01",
                                      "--device", "cpu", "--engine", engine, "--out", str(tmp_path / engine)])
        assert result.exit_code == 0, result.output
        outs[engine] = np.load(next((tmp_path / engine).rglob("*.raw.npy")))
    assert rel_err(outs["torch"], outs["ort"]) <= 1e-4
    bad = runner.invoke(main, ["explain", str(region_model), str(image), "--engine", "tvm"])
    assert bad.exit_code == 2


# ---- device errors say why and what to do ------------------------------------------------------------------------
def test_cuda_problem_names_the_cause(monkeypatch, fresh_probes):
    monkeypatch.setattr(devices_module.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "has no CUDA provider" in cuda_problem() and "pip install onnxruntime-gpu" in cuda_problem()
    cuda_problem.cache_clear()
    monkeypatch.setattr(devices_module.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(devices_module, "_probe_uses_cuda", lambda: False)  # the probe session fell back to CPU
    monkeypatch.setattr(devices_module, "_gpu_problem", lambda: "there is no GPU to run on (no NVIDIA driver)")
    assert cuda_problem().startswith("there is no GPU") and cuda_problem().endswith("use --device cpu")
    cuda_problem.cache_clear()
    monkeypatch.setattr(devices_module, "_gpu_problem", lambda: None)
    monkeypatch.setattr(devices_module, "_missing_library", lambda: "libcublasLt.so.13")
    message = cuda_problem()
    assert "cannot load libcublasLt.so.13" in message and "cuDNN 9" in message and "--device cpu" in message
    cuda_problem.cache_clear()
    monkeypatch.setattr(devices_module, "_probe_uses_cuda", lambda: True)
    assert cuda_problem() is None


def test_probe_here_reports_a_reason(fresh_probes):
    """On this machine (no GPU) the probe itself runs: a reason, not an obscure load error."""
    problem = cuda_problem()
    if problem is not None:
        assert "IR version" not in problem and "--device cpu" in problem
        with pytest.raises(DeviceError, match="^CUDA was asked for but"):
            plan_devices("cuda", "ort")


def test_torch_cuda_problem_names_the_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in torch_cuda_problem() and "pytorch.org" in torch_cuda_problem()
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "built for CUDA 12.8 but sees no usable GPU" in torch_cuda_problem()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_cuda_problem() is None


def fake(monkeypatch, ort_problem: str | None, torch_problem: str | None) -> None:
    monkeypatch.setattr(devices_module, "cuda_problem", lambda: ort_problem)
    monkeypatch.setattr(devices_module, "torch_cuda_problem", lambda: torch_problem)


def test_device_cuda_switches_to_engine_torch_when_only_torch_has_cuda(monkeypatch, caplog, region_model):
    fake(monkeypatch, "onnxruntime-gpu cannot load libcublasLt.so.13", None)
    with caplog.at_level(logging.WARNING, logger="onnxplain"):
        ex = Explainer(region_model, preprocess="raw01", device="cuda", quiet=True)
    assert ex.engine == "torch" and ex.device == "cuda" and ex.providers == ["CPUExecutionProvider"]
    assert isinstance(ex.runtime, TorchRuntime) and ex.runtime.device == "cuda"
    [record] = [r for r in caplog.records if "engine torch" in r.getMessage()]
    assert "libcublasLt.so.13" in record.getMessage() and "\n" not in record.getMessage()
    with pytest.raises(DeviceError, match="--engine torch"):  # ort asked for by name: no switch, say what works
        plan_devices("cuda", "ort")
    assert plan_devices("auto").engine == "ort" and plan_devices("auto").torch_device == "cuda"
    with pytest.raises(DeviceError, match="converter cannot run this model"):
        plan_devices("cuda", convertible=lambda: False)


def test_torch_without_cuda_is_reported_when_torch_is_needed(monkeypatch, region_model):
    fake(monkeypatch, None, "torch 2.13.0+cpu is a CPU-only build (no CUDA); install a CUDA build of torch")
    plan = plan_devices("cuda")
    assert plan.engine == "ort" and plan.providers[0] == "CUDAExecutionProvider" and plan.torch_problem
    with pytest.raises(DeviceError, match="^CUDA was asked for with engine torch but torch .* CPU-only build"):
        plan_devices("cuda", "torch")
    monkeypatch.setattr(devices_module, "cuda_problem", lambda: "there is no GPU to run on")
    stand_in = r"no GPU to run on; torch cannot stand in \(torch .* CPU-only build \(no CUDA\)\)\.$"
    with pytest.raises(DeviceError, match=stand_in):
        plan_devices("cuda")
    assert plan_devices("auto") == DevicePlan(["CPUExecutionProvider"], "cpu", "ort")
    with pytest.raises(DeviceError, match="Unknown engine 'tvm'"):
        plan_devices("cpu", "tvm")


def test_explainer_raises_torch_problem_on_first_torch_use(monkeypatch, region_model):
    fake(monkeypatch, None, "torch 2.13.0+cpu is a CPU-only build (no CUDA)")
    ex = Explainer(region_model, preprocess="raw01", device="cpu", quiet=True)
    ex._torch_problem = plan_devices("cuda").torch_problem  # as device="cuda" on a GPU without a CUDA torch
    with pytest.raises(DeviceError, match="^CUDA was asked for but torch .* CPU-only build"):
        ex.explain(helpers.random_images(1), method="grad-cam")
    assert ex.explain(helpers.random_images(1), method="cam")[0].raw.shape == (16, 16)  # onnxruntime still works


# ---- batch sizes from free memory ------------------------------------------------------------------------------
def test_auto_batch_size_from_fake_memory():
    mb = 1 << 20
    assert auto_batch_size(100 * mb, 8000 * mb, 32) == int(8000 * HEADROOM // (100 * SAFETY)) == 20
    assert auto_batch_size(100 * mb, 80_000 * mb, 32) == 32   # the configured size is the most
    assert auto_batch_size(100 * mb, 50 * mb, 32) == 1        # never below one image
    assert auto_batch_size(100 * mb, None, 32) == 32          # unknown free memory: the configured size
    assert auto_batch_size(0, 50 * mb, 8) == 8                # unknown footprint: the configured size
    assert per_image_bytes([("float32", ("batch", 3, 224, 224)), ("int64", (4,)), ("float16", (None, 8, "h", 2)),
                            ("unknown", None)]) == 4 * 3 * 224 * 224 + 8 + 2 * 8 * 2
    ram = available_ram()
    assert ram is None or ram > 0


def test_runtime_batches_by_free_memory(monkeypatch, region_model):
    model = Model.load(region_model)
    footprint = per_image_bytes((t.dtype, t.shape) for t in model.tensors.values())
    assert footprint >= 4 * (3 * 32 * 32 + 2 * 6 * 32 * 32 + 3 * 8 * 16 * 16)  # input, conv1/relu, conv2/relu/mask
    monkeypatch.setattr(memory_module, "free_memory", lambda device: int(footprint * SAFETY / HEADROOM * 3))
    small = Runtime(model.proto, batch_size=32, per_image=footprint)
    assert small.batch_size == 3 and small.max_batch_size == 32
    x = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(small.run(x)["scores"], Runtime(model.proto, batch_size=32).run(x)["scores"],
                               rtol=1e-5, atol=1e-6)
    ex = Explainer(region_model, preprocess="raw01", device="cpu", quiet=True, batch_size=16)
    assert ex.runtime.batch_size == 3 and ex.tail(model.auto_layer()[0])[1].batch_size == 3


def test_iobinding_path_on_cpu_equals_session_run(region_model):
    """The CUDA path's binding code, run with CPU OrtValues (the device is its only difference here):
    outputs in the requested order, equal to session.run."""
    model = Model.load(region_model)
    layer = model.auto_layer()[0]
    runtime = Runtime(model.proto)
    session = runtime.session(["scores", layer])
    x = np.random.default_rng(2).random((3, 3, 32, 32), dtype=np.float32)
    for outputs in (["scores", layer], [layer, "scores"]):
        bound = run_bound(session, outputs, {"input": x}, "cpu")
        for got, want in zip(bound, session.run(outputs, {"input": x})):
            assert got.shape == want.shape and np.array_equal(got, want)
