"""onnxruntime sessions: chosen once per device, cached per set of requested outputs, run in batches."""
from __future__ import annotations

import logging
import threading
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import DeviceError
from .progress import progress
from .surgery import expose

log = logging.getLogger(__name__)


def cuda_problem() -> str | None:
    """Why onnxruntime cannot use CUDA here (one sentence), or None when it can."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return ("onnxruntime has no CUDA provider in this installation; install onnxruntime-gpu "
                "(not onnxruntime) or use --device cpu")
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # the fallback to CPU is detected below, not logged
        session = ort.InferenceSession(_tiny_model().SerializeToString(), options,
                                       providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            return ("onnxruntime's CUDA provider could not start (no GPU, or the CUDA/cuDNN libraries are missing); "
                    "install CUDA 12+ and cuDNN 9, or use --device cpu")
    except Exception as exc:  # the provider raises for a missing device or library
        return f"onnxruntime's CUDA provider failed to start ({str(exc).splitlines()[0]}); use --device cpu"
    return None


def _tiny_model() -> onnx.ModelProto:
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "probe", [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])


def choose_providers(device: str) -> list[str]:
    """Providers for 'cpu', 'cuda' or 'auto' (CUDA when it is present and works, else CPU)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device not in ("cuda", "auto"):
        raise DeviceError(f"Unknown device '{device}'; use cpu, cuda or auto.")
    problem = cuda_problem()
    if problem is None:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise DeviceError(f"CUDA was asked for but {problem}.")
    return ["CPUExecutionProvider"]


class Runtime:
    """Runs one ModelProto on onnxruntime: one session per output set, work split into batches.

    Sessions are built lazily and kept, so no method builds the same session twice.
    """

    def __init__(self, proto: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",),
                 batch_size: int = 32, quiet: bool = True):
        self.proto = proto
        self.providers = list(providers)
        self.batch_size = batch_size
        self.quiet = quiet
        self._sessions: dict[frozenset, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        self.forwards = 0  # images run so far: lets tests and benchmarks count forward passes
        weights = {t.name for t in proto.graph.initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in weights]
        self.output_names = [o.name for o in proto.graph.output]
        first = next(i for i in proto.graph.input if i.name not in weights)
        dims = first.type.tensor_type.shape.dim
        self.fixed_batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def session(self, outputs: Iterable[str]) -> ort.InferenceSession:
        """The cached session whose outputs include `outputs`."""
        key = frozenset(outputs)
        with self._lock:
            if key not in self._sessions:
                extra = [n for n in outputs if n not in self.output_names]
                proto = expose(self.proto, extra) if extra else self.proto
                options = ort.SessionOptions()
                options.log_severity_level = 3
                self._sessions[key] = ort.InferenceSession(proto.SerializeToString(), options,
                                                           providers=self.providers)
            return self._sessions[key]

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None,
            desc: str | None = None) -> dict[str, np.ndarray]:
        """Run on a whole batch, split into chunks of `batch_size` (or 1 where the model's batch is fixed)."""
        if isinstance(feeds, np.ndarray):
            feeds = {self.input_names[0]: feeds}
        outputs = list(outputs or self.output_names)
        session = self.session(outputs)
        total = len(next(iter(feeds.values())))
        step = 1 if self.fixed_batch == 1 else max(1, self.batch_size)
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        starts = range(0, total, step)
        for start in progress(starts, desc=desc, quiet=self.quiet or len(starts) < 4, unit="batch"):
            part = {k: np.ascontiguousarray(v[start:start + step]) for k, v in feeds.items()}
            for name, value in zip(outputs, session.run(outputs, part)):
                chunks[name].append(value)
            self.forwards += len(next(iter(part.values())))
        return {name: np.concatenate(values) if values else np.empty((0,)) for name, values in chunks.items()}
