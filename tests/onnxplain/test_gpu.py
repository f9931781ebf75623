"""CUDA against the CPU: grad-cam, onnxruntime CUDA (IOBinding) for occlusion and score-cam, engine torch on
CUDA against onnxruntime. Skipped without a GPU (the torch tests need a CUDA torch, the onnxruntime tests a
working CUDA provider); the benchmark's --dry-run and its no-CUDA exit always run.

Tolerances: torch tests turn TF32 off and compare within 1e-3 of the CPU map's largest magnitude;
onnxruntime CUDA keeps its default math (TF32 convolutions on Ampere and later: 10-bit mantissas), so its
maps are compared within 2e-2 of the largest magnitude.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxplain import Explainer
from onnxplain.methods import list_methods
from onnxplain.model import Model
from onnxplain.devices import cuda_problem
from onnxplain.runtime import Runtime, TorchRuntime

ROOT = Path(__file__).resolve().parents[2]
PHOTO = str(ROOT / "models" / "chelsea.jpg")
TORCH_CUDA = torch.cuda.is_available()
ORT_CUDA = TORCH_CUDA and cuda_problem() is None
needs_torch_cuda = pytest.mark.skipif(not TORCH_CUDA, reason="needs torch built with CUDA and a GPU")
needs_ort_cuda = pytest.mark.skipif(not ORT_CUDA, reason=f"needs onnxruntime's CUDA provider: {cuda_problem()}")
ORT_METHODS = [m["name"] for m in list_methods() if m["engine"] == "ort"]
PARAMS = {"rise": {"n": 200}, "score-cam": {"channels": 32}, "smoothgrad-fd": {"n": 32},
          "occlusion": {"window": 32, "stride": 32}}


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(float(np.abs(b).max()), 1e-12))


@pytest.fixture
def no_tf32(monkeypatch):
    """Full fp32 in torch's CUDA convolutions and matmuls for the duration of a test."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.fixture(scope="module")
def cpu_effnet(effnet):
    return Explainer(effnet, device="cpu", quiet=True)


@needs_torch_cuda
def test_grad_cam_on_cuda_equals_cpu(effnet, cpu_effnet, no_tf32):
    cuda = Explainer(effnet, device="cuda", quiet=True)
    assert cuda.torch_device == "cuda"
    [a], [b] = cuda.explain(PHOTO, method="grad-cam"), cpu_effnet.explain(PHOTO, method="grad-cam")
    assert a.target == b.target and rel_err(a.raw, b.raw) <= 1e-3


@needs_ort_cuda
@pytest.mark.parametrize("method, params", [("occlusion", {"window": 32, "stride": 16}),
                                            ("score-cam", {"channels": 64})])
def test_ort_cuda_equals_cpu(method, params, effnet, cpu_effnet):
    cuda = Explainer(effnet, device="cuda", engine="ort", quiet=True)
    assert cuda.runtime.device == "cuda"
    [a], [b] = cuda.explain(PHOTO, method=method, **params), cpu_effnet.explain(PHOTO, method=method, **params)
    assert a.target == b.target and rel_err(a.raw, b.raw) <= 2e-2


@needs_ort_cuda
def test_iobinding_runs_equal_cpu(region_model, effnet, cpu_effnet):
    """The whole model with an exposed layer, and EfficientNet-Lite0's tail (fed its cut tensor and the input,
    which crosses the cut), in uneven batches: IOBinding only (session.run is never called), values within
    2e-2 relative (TF32)."""
    model = Model.load(region_model)
    layer = model.auto_layer()[0]
    x = np.random.default_rng(0).random((11, 3, 32, 32), dtype=np.float32)
    gpu = Runtime(model.proto, ["CUDAExecutionProvider", "CPUExecutionProvider"], batch_size=4)
    want = Runtime(model.proto, batch_size=4).run(x, ["scores", layer])
    cuda = Explainer(effnet, device="cuda", engine="ort", quiet=True)
    deep = cuda.model.auto_layer()[0]
    cut, tail = cuda.tail(deep)
    batch = cpu_effnet.prepare([PHOTO] * 5)
    feeds = {cut.at: cpu_effnet.forward(batch, [deep])[deep], **{name: batch.x for name in cut.crossing}}
    want_tail = cpu_effnet.tail(deep)[1].run(feeds)
    assert len(feeds) == 2 and tail.batch_size > 1
    with mock.patch.object(ort.InferenceSession, "run", side_effect=AssertionError("plain path used on CUDA")):
        got = gpu.run(x, ["scores", layer])
        got_tail = tail.run(feeds)
    assert gpu.forwards == 11
    for name in ("scores", layer):
        assert got[name].shape == want[name].shape and rel_err(got[name], want[name]) <= 2e-2
    assert rel_err(got_tail["logits"], want_tail["logits"]) <= 2e-2


@needs_torch_cuda
@pytest.mark.parametrize("method", ORT_METHODS)
def test_engine_torch_on_cuda_equals_ort(method, effnet, cpu_effnet, no_tf32):
    cuda = Explainer(effnet, device="cuda", engine="torch", quiet=True)
    assert isinstance(cuda.runtime, TorchRuntime) and cuda.device == "cuda"
    params = PARAMS.get(method, {})
    [a], [b] = cuda.explain(PHOTO, method=method, **params), cpu_effnet.explain(PHOTO, method=method, **params)
    assert a.target == b.target and rel_err(a.raw, b.raw) <= 1e-3, method


# ---- the benchmark runs here too ------------------------------------------------------------------------------
def load_benchmark():
    """benchmarks/gpu.py as a module (it imports its neighbour nets.py, as a script run from there would)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_dry_run(capsys):
    threads = torch.get_num_threads()
    try:
        load_benchmark().main(["--dry-run"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for row in ("torch /image", "ort-iobinding /image", "grad-cam", "score-cam", "occlusion", "smoothgrad", "dry run"):
        assert row in out
    occlusion = next(line for line in out.splitlines() if line.startswith("occlusion"))
    assert occlusion.split()[-3] == "50"  # 7 x 7 windows of 16 px at stride 8 on 64 px, plus the unoccluded pass


@pytest.mark.skipif(TORCH_CUDA, reason="checks the message printed without CUDA")
def test_benchmark_without_cuda_says_so():
    with pytest.raises(SystemExit, match="needs CUDA, but torch .*--dry-run"):
        load_benchmark().main([])

