"""Runtime: device choice, one session per output set, batching, fixed batch of 1."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxplain.errors import DeviceError
from onnxplain.model import Model
from onnxplain.runtime import Runtime, choose_providers, cuda_problem


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


def test_fixed_batch_of_one_loops(tmp_path):
    text = """
    <ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 3] x) => (float[1, 3] y) { y = Relu(x) }
    """
    runtime = Runtime(onnx.parser.parse_model(text), batch_size=32)
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    assert np.array_equal(runtime.run(x)["y"], np.maximum(x, 0))


def test_device_choice():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    if cuda_problem() is None:
        assert choose_providers("auto")[0] == "CUDAExecutionProvider"
    else:
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(DeviceError, match="CUDA was asked for but"):
            choose_providers("cuda")
    with pytest.raises(DeviceError, match="Unknown device 'tpu'"):
        choose_providers("tpu")
