"""Where models run: device and engine choice, batch sizes from free memory, and the two runtimes.

`Runtime` runs a ModelProto on onnxruntime (one session per output set, IOBinding on CUDA);
`TorchRuntime` runs the same graph through the torch converter's OnnxModule with the same
interface, so a forward-only method gives the same answer on either engine.
"""
from __future__ import annotations

import abc
import ctypes
import functools
import logging
import math
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import DeviceError, ModelError
from .progress import progress
from .surgery import expose

log = logging.getLogger(__name__)

CUDA_DOCS = "https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements"
SAFETY = 2.0    # the per-image estimate times this: workspaces, allocator rounding, copies on the way
HEADROOM = 0.5  # share of the free memory one run may fill (the rest: weights, other processes, fragmentation)


# ---- why CUDA cannot be used ------------------------------------------------------------------
@functools.cache
def cuda_problem() -> str | None:
    """Why onnxruntime cannot use CUDA here (what is wrong and what to do), or None when it can.

    Cached: the answer does not change within a process, and the probe costs a session.
    """
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:  # older builds: names below fall back to their defaults
        info = None
    package = f"{getattr(info, 'package_name', 'onnxruntime')} {ort.__version__}"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (f"this onnxruntime build ({package}) has no CUDA provider; replace it with onnxruntime-gpu "
                "(pip uninstall onnxruntime && pip install onnxruntime-gpu) or use --device cpu")
    try:
        if _probe_uses_cuda():
            return None
    except Exception as exc:  # the provider may raise instead of falling back
        return f"onnxruntime's CUDA provider failed to start ({str(exc).splitlines()[0]}); use --device cpu"
    gpu = _gpu_problem()
    if gpu is not None:
        return f"{gpu}; use --device cpu"
    library = _missing_library()
    cuda = getattr(info, "cuda_version", "12")
    if library is not None:
        return (f"{package} has a CUDA provider but cannot load {library} (it needs the CUDA {cuda} and cuDNN 9 "
                f"libraries); install them (e.g. pip install \"onnxruntime-gpu[cuda,cudnn]\") and make them findable "
                "(LD_LIBRARY_PATH, or onnxruntime.preload_dlls() in Python), or use --device cpu")
    return (f"{package} found a GPU and its CUDA libraries but its CUDA provider fell back to the CPU; "
            f"check the versions against {CUDA_DOCS} (CUDA {cuda}, cuDNN 9) or use --device cpu")


def _probe_uses_cuda() -> bool:
    """Whether a session asked for CUDA gets it (onnxruntime silently falls back to the CPU otherwise)."""
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "probe", [onnx.helper.make_tensor_value_info("x", 1, [1])],
                                   [onnx.helper.make_tensor_value_info("y", 1, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)  # the fallback is reported by cuda_problem, not by onnxruntime's log
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
    return session.get_providers()[0] == "CUDAExecutionProvider"


def _gpu_problem() -> str | None:
    """Why there is no GPU (no NVIDIA driver, or the driver sees no device), or None when one is visible."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        driver = ctypes.CDLL(name)
    except OSError:
        return f"there is no GPU to run on (no NVIDIA driver: {name} cannot be loaded)"
    count = ctypes.c_int(0)
    status = driver.cuInit(0)
    if status != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return (f"the NVIDIA driver sees no GPU device (cuInit returned {status}); check nvidia-smi and "
                "CUDA_VISIBLE_DEVICES")
    return None


def _missing_library() -> str | None:
    """The first library that onnxruntime's CUDA provider cannot load (e.g. libcublasLt.so.13), or None."""
    folder = Path(ort.__file__).parent / "capi"
    provider = next(iter(sorted(folder.glob("*onnxruntime_providers_cuda*"))), None)
    if provider is None:
        return None
    try:
        ctypes.CDLL(str(provider))
    except OSError as exc:  # the loader names the missing library first: "libX.so.N: cannot open ..."
        return Path(str(exc).split(":")[0].strip()).name or str(exc)
    return None


def torch_cuda_problem() -> str | None:
    """Why torch cannot use CUDA here (what is wrong and what to do), or None when it can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed; install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build (no CUDA); install a CUDA build of torch "
                "(https://pytorch.org/get-started/locally/) or use --device cpu")
    if not torch.cuda.is_available():
        return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no usable GPU "
                "(no driver, a driver too old for it, or CUDA_VISIBLE_DEVICES hides the GPU); check nvidia-smi "
                "or use --device cpu")
    return None


# ---- device and engine choice --------------------------------------------------------------------
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


@dataclass(frozen=True)
class DevicePlan:
    """Where an Explainer runs: onnxruntime providers, the torch device, and the engine of forward-only methods."""
    providers: list[str]
    torch_device: str
    engine: str                        # "ort" or "torch": what runs the forward-only methods
    torch_problem: str | None = None   # why torch cannot use the CUDA asked for (raised when torch is needed)
    note: str | None = None            # one line to log where the plan departs from what was asked

    @property
    def device(self) -> str:
        """Where the forward-only methods run."""
        if self.engine == "torch":
            return self.torch_device
        return "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"


def plan_devices(device: str = "auto", engine: str = "auto",
                 convertible: Callable[[], bool] = lambda: True) -> DevicePlan:
    """Choose providers, torch device and engine for `device` (cpu | cuda | auto) and `engine` (auto | ort | torch).

    engine auto is onnxruntime, except that device cuda switches to torch when onnxruntime cannot use CUDA
    but torch can and the converter takes the model (`convertible`); the plan's note says so. device auto
    never changes the engine. With device cuda, a torch without CUDA is reported when torch is first needed.
    """
    if engine not in ("auto", "ort", "torch"):
        raise DeviceError(f"Unknown engine '{engine}'; use auto, ort or torch.")
    if device not in ("cpu", "cuda", "auto"):
        raise DeviceError(f"Unknown device '{device}'; use cpu, cuda or auto.")
    cpu = ["CPUExecutionProvider"]
    if device == "cpu":
        return DevicePlan(cpu, "cpu", "torch" if engine == "torch" else "ort")
    torch_problem = torch_cuda_problem()
    torch_device = "cuda" if torch_problem is None or device == "cuda" else "cpu"
    pending = torch_problem if device == "cuda" else None
    if engine == "torch":
        if pending:
            raise DeviceError(f"CUDA was asked for with engine torch but {pending}.")
        return DevicePlan(cpu, torch_device, "torch")
    ort_problem = cuda_problem()
    if ort_problem is None:
        return DevicePlan(["CUDAExecutionProvider", "CPUExecutionProvider"], torch_device, "ort", pending)
    if device == "auto":
        return DevicePlan(cpu, torch_device, "ort")
    if engine == "ort":
        hint = "; or pass engine torch (--engine torch), which torch's CUDA can run" if torch_problem is None else ""
        raise DeviceError(f"CUDA was asked for but {ort_problem}{hint}.")
    if torch_problem is not None:
        raise DeviceError(f"CUDA was asked for but {ort_problem}; torch cannot stand in "
                          f"({torch_problem.split(';')[0]}).")
    if not convertible():
        raise DeviceError(f"CUDA was asked for but {ort_problem}; torch has CUDA but the converter cannot run "
                          "this model (see `onnxplain inspect`).")
    return DevicePlan(cpu, "cuda", "torch", note=f"onnxruntime cannot use CUDA ({ort_problem}); forward-only "
                                                 "methods run on torch's CUDA instead (engine torch).")


# ---- batch sizes from free memory ----------------------------------------------------------------
def per_image_bytes(shapes: Iterable[tuple[str, Sequence[Any] | None]]) -> int:
    """Bytes that one image's activations take: the sum over tensors (dtype name, shape with a batch axis first)
    of their size; unknown dims and dtypes count as 1 and 4 bytes. An over-estimate of the peak, on purpose."""
    total = 0
    for dtype, shape in shapes:
        if shape is None:
            continue
        try:
            itemsize = np.dtype(dtype).itemsize
        except TypeError:
            itemsize = 4
        total += itemsize * math.prod(d for d in list(shape)[1:] if isinstance(d, int) and d > 0)
    return total


def auto_batch_size(per_image: int, free: int | None, maximum: int) -> int:
    """Images per batch: as many as fit in HEADROOM of `free` bytes at SAFETY x `per_image` each,
    between 1 and `maximum` (all of `maximum` when the free memory or the footprint is unknown)."""
    maximum = max(1, int(maximum))
    if not free or per_image <= 0:
        return maximum
    return max(1, min(maximum, int(free * HEADROOM // (per_image * SAFETY))))


def free_memory(device: str) -> int | None:
    """Free bytes on `device`: the GPU's through torch (None without a CUDA torch), else available RAM."""
    if device == "cuda":
        try:
            import torch
            return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None
        except Exception:  # an unusable driver: fall back to the configured batch size
            return None
    return available_ram()


def available_ram() -> int | None:
    """Available RAM in bytes (MemAvailable, within the cgroup's limit where one is set), or None."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
    except OSError:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            room = int(Path(limit).read_text()) - int(Path(used).read_text())
        except (OSError, ValueError):  # no such cgroup file, or "max"
            continue
        found = room if found is None else min(found, room)
    return found


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

    @functools.cached_property
    def _numpy_blas(self):
        from threadpoolctl import ThreadpoolController
        controller = ThreadpoolController()
        paths = [lib.filepath for lib in controller.lib_controllers
                 if lib.user_api == "blas" and "torch" not in Path(lib.filepath).parts]
        return controller.select(filepath=paths) if paths else None

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
        free = free_memory(self.device) if per_image else None
        self.batch_size = auto_batch_size(per_image or 0, free, batch_size)
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
                self._sessions[key] = ort.InferenceSession(proto.SerializeToString(), options,
                                                           providers=self.providers)
            return self._sessions[key]

    def _prepare(self, outputs: list[str]) -> None:
        self.session(outputs)

    def _run_batch(self, outputs: list[str], part: dict[str, np.ndarray]) -> list[np.ndarray]:
        session = self.session(outputs)
        if self.device != "cuda":
            return session.run(outputs, part)
        return run_bound(session, outputs, part, "cuda")


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
