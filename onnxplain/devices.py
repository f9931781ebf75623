"""Where an Explainer runs: why CUDA cannot be used (onnxruntime's and torch's), and the device plan.

`plan_devices` turns a device (cpu | cuda | auto) and an engine (auto | ort | torch) into a DevicePlan: the
onnxruntime providers, the torch device and the engine of the forward-only methods, with one sentence on what
is wrong and what to do wherever CUDA was asked for and cannot be had.
"""
from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import onnxruntime as ort

from .errors import DeviceError

CUDA_DOCS = "https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html#requirements"


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
