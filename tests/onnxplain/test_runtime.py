"""Runtime: device choice (devices.plan_devices), one session per output set, batching, fixed batch of 1,
numpy's BLAS threads."""
from __future__ import annotations

import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from threadpoolctl import threadpool_info

import helpers
from onnxplain import Explainer
from onnxplain.errors import DeviceError
from onnxplain.model import Model
from onnxplain.devices import DevicePlan, cuda_problem, plan_devices, torch_cuda_problem
from onnxplain.runtime import Runtime, one_thread_blas


def test_batched_run_equals_one_call_and_sessions_are_cached(region_model):
    model = Model.load(region_model)
    runtime = Runtime(model.proto, batch_size=3)
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    layer = model.auto_layer()[0]
    out = runtime.run(x, ["scores", layer])
    whole = ort.InferenceSession(region_model.read_bytes(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(out["scores"], whole, rtol=1e-5, atol=1e-6)
    assert out[layer].shape == (8, 8, 16, 16)
    runtime.run(x, [layer, "scores"])
    assert len(runtime._sessions) == 1  # same output set, same session
    assert runtime.forwards == 16


def test_runtime_with_threads_is_built_once_per_count_and_runs_the_same_model(region_model):
    model = Model.load(region_model)
    runtime = Runtime(model.proto, batch_size=3)
    one = runtime.with_threads(1)
    assert one is runtime.with_threads(1) and one is not runtime.with_threads(2)
    assert one.threads == 1 and one.batch_size == 3
    assert one.session(["scores"]).get_session_options().intra_op_num_threads == 1
    x = np.random.default_rng(1).normal(size=(5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(one.run(x)["scores"], runtime.run(x)["scores"], rtol=1e-5, atol=1e-6)


def test_fixed_batch_of_one_loops(tmp_path):
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }
    """
    runtime = Runtime(onnx.parser.parse_model(text), batch_size=32)
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    assert np.array_equal(runtime.run(x)["y"], np.maximum(x, 0))


def test_device_choice():
    """What the Explainer asks: cpu is onnxruntime's CPU provider; auto takes onnxruntime's CUDA only when it
    works; cuda without it is a DeviceError naming the cause; unknown names are refused."""
    assert plan_devices("cpu") == DevicePlan(["CPUExecutionProvider"], "cpu", "ort")
    assert plan_devices("cpu", "torch") == DevicePlan(["CPUExecutionProvider"], "cpu", "torch")
    auto = plan_devices("auto")
    torch_device = "cuda" if torch_cuda_problem() is None else "cpu"
    if cuda_problem() is None:
        assert auto.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"] and auto.device == "cuda"
    else:
        assert auto == DevicePlan(["CPUExecutionProvider"], torch_device, "ort") and auto.device == "cpu"
        with pytest.raises(DeviceError, match="^CUDA was asked for but"):
            plan_devices("cuda", "ort")
    with pytest.raises(DeviceError, match="^Unknown device 'tpu'; use cpu, cuda or auto.$"):
        plan_devices("tpu")
    with pytest.raises(DeviceError, match="^Unknown engine 'tvm'; use auto, ort or torch.$"):
        plan_devices("cpu", "tvm")


def numpy_blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "torch" not in lib["filepath"]]


def test_numpy_blas_runs_on_one_thread_inside_methods_and_is_restored_after(region_model):
    """While a method runs (seen from inside a callable target) numpy's BLAS has one thread; a nested use keeps
    the limit until the outer one leaves; afterwards the original thread counts are back."""
    before = numpy_blas_threads()
    seen = []

    def score(outputs):
        seen.append(numpy_blas_threads())
        return outputs["scores"][:, 0]

    explainer = Explainer(region_model, preprocess="raw01", device="cpu", quiet=True)
    explainer.explain(helpers.random_images(1), method="occlusion", target=score, window=(16, 16))
    assert seen and all(threads == [1] * len(before) for threads in seen)
    assert numpy_blas_threads() == before
    with one_thread_blas:
        with one_thread_blas:
            pass
        assert numpy_blas_threads() == [1] * len(before)
    assert numpy_blas_threads() == before


def test_one_thread_blas_is_lifted_when_the_last_of_overlapping_users_leaves():
    """Two server threads overlapping: the first to leave does not lift the limit, the last one does.
    (OpenBLAS ignores thread counts set from other threads once the main thread has set one, so this
    checks the limit's bookkeeping, not the library's count.)"""
    entered, leave = threading.Barrier(2), threading.Event()
    held = []

    def user():
        with one_thread_blas:
            entered.wait()
            leave.wait()
            held.append(one_thread_blas._limit is not None)

    worker = threading.Thread(target=user)
    worker.start()
    with one_thread_blas:
        entered.wait()
    still_held = one_thread_blas._limit is not None
    leave.set()
    worker.join()
    assert still_held and held == [True] and one_thread_blas._limit is None


BLAS_LOADED_LATER = """
import json, sys
from threadpoolctl import threadpool_info
from onnxplain.runtime import one_thread_blas
def counts():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "torch" not in lib["filepath"]}
with one_thread_blas:
    pass
assert "scipy.linalg" not in sys.modules
import scipy.linalg
before = counts()
with one_thread_blas:
    inside = counts()
print(json.dumps([sorted(before.values()), sorted(inside.values()), counts() == before]))
"""


def test_one_thread_blas_also_limits_a_blas_loaded_after_its_first_use():
    """scipy's OpenBLAS loaded after the first method run (as the incremental tests' imports did before the
    runtime tests) is limited on the next run like numpy's, and restored after."""
    import json
    import os
    import subprocess
    import sys
    if (os.cpu_count() or 1) < 2:
        pytest.skip("OpenBLAS runs on one thread on one core anyway.")
    result = subprocess.run([sys.executable, "-c", BLAS_LOADED_LATER], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, inside, restored = json.loads(result.stdout)
    assert len(before) >= 2 and max(before) > 1  # numpy's and scipy's, each on more than one thread
    assert inside == [1] * len(before) and restored
