"""The two runtimes, and numpy's BLAS threads while they run.

`Runtime` runs a ModelProto on onnxruntime (one session per output set, IOBinding on CUDA);
`TorchRuntime` runs the same graph through the torch converter's OnnxModule with the same
interface, so a forward-only method gives the same answer on either engine. Both size their batches
from free memory (memory.py); where they run is decided by devices.py.
"""
from __future__ import annotations

import abc
import logging
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from . import memory
from .errors import ModelError
from .limits import checkpoint
from .progress import progress
from .surgery import expose

log = logging.getLogger(__name__)


# ---- numpy's BLAS threads --------------------------------------------------------------------------
class OneThreadBlas:
    """A context that keeps numpy's own BLAS on one thread while a model engine owns the cores.

    OpenBLAS workers busy-wait after every call; between the batches of RISE or SmoothGrad-FD (a mask
    upsampling or a gradient sum: small BLAS calls) their spinning took about 10% of onnxruntime's time on a
    2-core machine. BLAS libraries inside torch are left alone. Nested and concurrent uses (a server's
    threads) share one limit, lifted when the last one leaves; OpenBLAS may ignore a count set from a
    thread other than the main one, which costs only the speed-up.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._limit = None
        self._found: tuple[int, Any] = (-1, None)  # (len(sys.modules) when scanned, the BLAS libraries found)

    @property
    def _numpy_blas(self):
        """numpy's (and other non-torch) BLAS libraries loaded now. Scanned again whenever modules were imported
        since the last scan (a scan takes ~3 ms): a BLAS loaded later (scipy's, cv2's) is limited too."""
        modules = len(sys.modules)
        if self._found[0] != modules:
            from threadpoolctl import ThreadpoolController
            controller = ThreadpoolController()
            paths = [lib.filepath for lib in controller.lib_controllers
                     if lib.user_api == "blas" and "torch" not in Path(lib.filepath).parts]
            self._found = (modules, controller.select(filepath=paths) if paths else None)
        return self._found[1]

    def __enter__(self):
        with self._lock:
            if self._users == 0 and self._numpy_blas is not None:
                self._limit = self._numpy_blas.limit(limits=1)
            self._users += 1
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limit is not None:
                self._limit.restore_original_limits()
                self._limit = None


one_thread_blas = OneThreadBlas()


# ---- the runtimes ---------------------------------------------------------------------------------
def numpy_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX tensor element type (None when unknown or not a plain number type)."""
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None
    return dtype if dtype.kind in "fiub" else None


def feedable_dtypes(inputs: Iterable[onnx.ValueInfoProto]) -> dict[str, np.dtype]:
    """The numpy dtype to feed each graph input in; an input of a type numpy cannot hold (bfloat16, ...) is
    a ModelError, so the user hears it in one sentence before any run instead of from onnxruntime mid-way."""
    dtypes = {}
    for value in inputs:
        elem_type = value.type.tensor_type.elem_type
        dtype = numpy_dtype(elem_type)
        if dtype is None and elem_type:
            kind = onnx.TensorProto.DataType.Name(elem_type).lower()
            raise ModelError(f"The model's input '{value.name}' is {kind}, which onnxplain cannot feed; re-export "
                             "the model with a float32, float16 or uint8 input.")
        if dtype is not None:
            dtypes[value.name] = dtype
    return dtypes


def as_input(values: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    """`values` (float32 from preprocessing and perturbation) in the graph input's dtype, contiguous:
    float16 or float64 models get a cast, integer image inputs (uint8) get rounded and clipped values."""
    if dtype is None or values.dtype == dtype:
        return np.ascontiguousarray(values)
    if dtype.kind in "iub" and values.dtype.kind == "f":
        limits = np.iinfo(dtype) if dtype.kind != "b" else None
        values = np.rint(values) if limits is None else np.clip(np.rint(values), limits.min, limits.max)
    return np.ascontiguousarray(values, dtype=dtype)


class BatchedRuntime(abc.ABC):
    """What both engines share: the graph's input and output names, the batch size, the forward count,
    and running a whole batch in chunks. Subclasses run one chunk (`_run_batch`) and say their `device`."""

    device: str

    def __init__(self, proto: onnx.ModelProto, batch_size: int = 32, quiet: bool = True,
                 per_image: int | None = None):
        self.proto = proto
        self.quiet = quiet
        self.forwards = 0  # images run so far: lets tests and benchmarks count forward passes
        weights = {t.name for t in proto.graph.initializer}
        self.input_names = [i.name for i in proto.graph.input if i.name not in weights]
        self.output_names = [o.name for o in proto.graph.output]
        self.input_dtypes = feedable_dtypes([i for i in proto.graph.input if i.name not in weights])
        first = next(i for i in proto.graph.input if i.name not in weights)
        dims = first.type.tensor_type.shape.dim
        self.fixed_batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else None
        self.max_batch_size = batch_size
        free = memory.free_memory(self.device) if per_image else None
        self.batch_size = memory.auto_batch_size(per_image or 0, free, batch_size)
        if self.batch_size < batch_size:
            log.info("batch size %d (of at most %d): %.0f MB free on %s, about %.1f MB per image",
                     self.batch_size, batch_size, (free or 0) / 1e6, self.device, (per_image or 0) / 1e6)

    def run(self, feeds: Mapping[str, np.ndarray] | np.ndarray, outputs: Sequence[str] | None = None,
            desc: str | None = None) -> dict[str, np.ndarray]:
        """Run on a whole batch, split into chunks of `batch_size` (or 1 where the model's batch is fixed)."""
        if isinstance(feeds, np.ndarray):
            feeds = {self.input_names[0]: feeds}
        outputs = list(outputs or self.output_names)
        self._prepare(outputs)
        total = len(next(iter(feeds.values())))
        step = 1 if self.fixed_batch == 1 else max(1, self.batch_size)
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        starts = range(0, total, step)
        for start in progress(starts, desc=desc, quiet=self.quiet or len(starts) < 4, unit="batch"):
            checkpoint()  # a deadline passed or the client left: stop between batches
            part = {k: as_input(v[start:start + step], self.input_dtypes.get(k)) for k, v in feeds.items()}
            for name, value in zip(outputs, self._run_batch(outputs, part)):
                chunks[name].append(value.astype(np.float32) if value.dtype == np.float16 else value)
            self.forwards += len(next(iter(part.values())))
        return {name: np.concatenate(values) if values else np.empty((0,)) for name, values in chunks.items()}

    def _prepare(self, outputs: list[str]) -> None:
        """Build what running `outputs` needs before the first chunk (so errors come before any work)."""

    @abc.abstractmethod
    def _run_batch(self, outputs: list[str], part: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The requested outputs for one chunk of the feeds."""


class Runtime(BatchedRuntime):
    """Runs one ModelProto on onnxruntime: one session per output set, work split into batches.

    Sessions are built lazily and kept, so no method builds the same session twice. On CUDA each
    batch goes through IOBinding: inputs copied to the GPU once, outputs copied back once.
    """

    def __init__(self, proto: onnx.ModelProto, providers: Sequence[str] = ("CPUExecutionProvider",),
                 batch_size: int = 32, quiet: bool = True, per_image: int | None = None,
                 threads: int | None = None):
        self.providers = list(providers)
        self.threads = threads  # onnxruntime's intra-op threads (None: its default, one per core)
        self._sessions: dict[frozenset, ort.InferenceSession] = {}
        self._lock = threading.Lock()
        super().__init__(proto, batch_size, quiet, per_image)

    @property
    def device(self) -> str:
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"

    def session(self, outputs: Iterable[str]) -> ort.InferenceSession:
        """The cached session whose outputs include `outputs`."""
        outputs = list(outputs)
        key = frozenset(outputs)
        with self._lock:
            if key not in self._sessions:
                extra = [n for n in outputs if n not in self.output_names]
                proto = expose(self.proto, extra) if extra else self.proto
                options = ort.SessionOptions()
                options.log_severity_level = 3
                if self.threads:
                    options.intra_op_num_threads = self.threads
                try:
                    self._sessions[key] = ort.InferenceSession(proto.SerializeToString(), options,
                                                               providers=self.providers)
                except Exception as exc:  # onnxruntime's Fail, InvalidGraph, NotImplemented: not Python types
                    raise load_error(exc) from None
            return self._sessions[key]

    def with_threads(self, threads: int) -> "Runtime":
        """This model on `threads` intra-op threads (built once per count), for callers that run several
        batches at once from their own threads."""
        siblings = self.__dict__.setdefault("_siblings", {})
        if threads not in siblings:
            siblings[threads] = Runtime(self.proto, self.providers, self.batch_size, self.quiet, threads=threads)
        return siblings[threads]

    def _prepare(self, outputs: list[str]) -> None:
        self.session(outputs)

    def _run_batch(self, outputs: list[str], part: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.session(outputs)
        if self.device != "cuda":
            return session.run(outputs, part)
        return run_bound(session, outputs, part, "cuda")


def load_error(exc: Exception) -> ModelError:
    """One sentence for a model onnxruntime refuses to load: an opset newer than it knows, or another reason."""
    import re
    text = str(exc)
    newest = re.search(r"support for domain (\S+) is till opset (\d+)", text)
    used = re.search(r"Opset (\d+)", text)
    if newest:
        return ModelError(f"The model uses opset {used.group(1) if used else '?'} of {newest.group(1)}, newer than "
                          f"onnxruntime {ort.__version__} supports (up to {newest.group(2)}); re-export it with "
                          f"opset {newest.group(2)} or lower, or upgrade onnxruntime.")
    detail = re.sub(r"\s+", " ", text.split(" : ")[-1]).strip().rstrip(".")[:300]
    return ModelError(f"onnxruntime {ort.__version__} cannot load the model ({detail}); re-export it with a "
                      "released opset or check it with `onnxplain inspect`.")


def run_bound(session: ort.InferenceSession, outputs: list[str], feeds: Mapping[str, np.ndarray],
              device: str = "cuda") -> list[np.ndarray]:
    """One run through IOBinding: each input copied to `device` once, outputs left there by onnxruntime and
    copied back once, in the order of `outputs` (what session.run returns, without its extra host copies)."""
    binding = session.io_binding()
    values = {name: ort.OrtValue.ortvalue_from_numpy(value, device, 0) for name, value in feeds.items()}
    for name, value in values.items():  # `values` keeps the device copies alive until the run is over
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        binding.bind_output(name, device, 0)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()


class TorchRuntime(BatchedRuntime):
    """Runs a ModelProto (the whole model, or the tail of a split) through the converter's OnnxModule,
    under torch.no_grad(), with the interface of Runtime.

    `module` returns the OnnxModule of the *whole* model (built on first use); feeds replace its
    tensors by name (`replace=`), so a tail runs only what follows its inputs, and requested tensors
    that are not outputs are taps. A float16 model's module computes in float32 (`onnxtorch.upcast_half`),
    so its float16 inputs are fed as float32.
    """

    def __init__(self, proto: onnx.ModelProto, module: Callable[[], Any], device: str = "cpu",
                 batch_size: int = 32, quiet: bool = True, per_image: int | None = None):
        self._module = module
        self.torch_device = device
        super().__init__(proto, batch_size, quiet, per_image)
        self.input_dtypes = {name: np.dtype(np.float32) if dtype == np.float16 else dtype
                             for name, dtype in self.input_dtypes.items()}

    @property
    def device(self) -> str:
        return "cuda" if str(self.torch_device).startswith("cuda") else "cpu"

    def _prepare(self, outputs: list[str]) -> None:
        self._module()

    def _run_batch(self, outputs: list[str], part: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch
        module = self._module()
        feeds = {name: torch.from_numpy(np.require(value, requirements=["C", "W"])).to(self.torch_device)
                 for name, value in part.items()}
        taps = [name for name in outputs if name not in module.output_names]
        with torch.no_grad():
            if taps:
                values, found = module(replace=feeds, taps=taps)
            else:
                values, found = module(replace=feeds), {}
        values = values if isinstance(values, tuple) else (values,)
        found = {**dict(zip(module.output_names, values)), **found}
        return [found[name].detach().cpu().numpy() for name in outputs]
