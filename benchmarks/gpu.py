"""Every method on CUDA against the reference figures of issue 10, in one run.

A ResNet-50-like network in plain torch (bottlenecks 3-4-6-3, 2048 channels after layer4; random weights,
fp32, 224x224) is exported to ONNX. On CUDA we time
  forward passes at batch 32: native torch; onnxruntime CUDA through our Runtime (IOBinding) and through
    numpy (session.run); the torch converter (engine torch);
  explanations of one image: grad-cam (layer4), score-cam over all 2048 channels, occlusion (16x16 windows,
    stride 8: 729 windows) and smoothgrad (n=50),
and print each next to the reference figure (pytorch-grad-cam, captum, torch, onnxruntime on the issue's GPU)
with ours / reference, and against a lower bound: forwards x the best per-image forward time measured here
(backward passes not counted). Forward-only methods run on the engine the Explainer picks for device cuda.

    python benchmarks/gpu.py [--repeats 3]    # needs torch with CUDA and a GPU
    python benchmarks/gpu.py --dry-run        # the same code on the CPU with a tiny net: checks the script only
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import onnxplain
from nets import export, resnet50, timed
from onnxplain.devices import cuda_problem, torch_cuda_problem
from onnxplain.runtime import Runtime, TorchRuntime

# the issue's figures: seconds per call (batch 1) or per image (forward passes at batch 32)
REFERENCE = {
    "grad-cam": ("pytorch-grad-cam GradCAM", 18.6e-3),
    "score-cam": ("pytorch-grad-cam ScoreCAM", 2.08),
    "occlusion": ("captum Occlusion", 0.65),
    "smoothgrad": ("captum NoiseTunnel", 69e-3),
    "torch": ("torch, batch 32", 0.19e-3),
    "ort-iobinding": ("ORT CUDA + IOBinding", 0.19e-3),
    "ort-numpy": ("ORT CUDA via numpy", 0.26e-3),
}


def forward_times(model: nn.Module, path: Path, explainer: onnxplain.Explainer, device: str, batch: int,
                  size: int, repeats: int, sync: Callable[[], None]) -> dict[str, float | str]:
    """Seconds per image of a forward pass at `batch` images, or why a row could not be timed."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
    found: dict[str, float | str] = {}
    xt = torch.from_numpy(x).to(device)
    with torch.no_grad():
        found["torch"] = timed(lambda: model(xt), repeats, sync) / batch
    providers = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    problem = None if device == "cpu" else cuda_problem()
    if problem is None:
        runtime = Runtime(onnxplain.Model.load(path).proto, providers, batch_size=batch)
        found["ort-iobinding"] = timed(lambda: runtime.run(x), repeats, sync) / batch
        session = runtime.session(runtime.output_names)
        found["ort-numpy"] = timed(lambda: session.run(None, {runtime.input_names[0]: x}), repeats, sync) / batch
    else:
        found["ort-iobinding"] = found["ort-numpy"] = f"n/a: {problem}"
    engine = TorchRuntime(explainer.model.proto, lambda: explainer.module, explainer.torch_device, batch_size=batch)
    found["engine torch"] = timed(lambda: engine.run(x), repeats, sync) / batch
    return found


def explain_times(explainer: onnxplain.Explainer, image: np.ndarray, layer: str, repeats: int, smooth_n: int,
                  sync: Callable[[], None]) -> dict[str, tuple[float, int]]:
    """(seconds per call, forward passes per call) of each method on one image."""
    runs = {
        "grad-cam": (lambda: explainer.explain(image, method="grad-cam", target=0, layer=layer), None),
        "score-cam": (lambda: explainer.explain(image, method="score-cam", target=0, layer=layer), "count"),
        "occlusion": (lambda: explainer.explain(image, method="occlusion", target=0, window=16, stride=8,
                                                score="logit", incremental="false"), "count"),  # batched, as captum
        "smoothgrad": (lambda: explainer.explain(image, method="smoothgrad", target=0, n=smooth_n), None),
    }
    found = {}
    for name, (run, counted) in runs.items():
        before = explainer.runtime.forwards
        run()
        forwards = explainer.runtime.forwards - before if counted else (smooth_n if name == "smoothgrad" else 1)
        found[name] = (timed(run, repeats, sync), forwards)
    return found


def report(forwards: dict[str, float | str], explains: dict[str, tuple[float, int]], dry_run: bool) -> str:
    """The table: ours, the reference, ours / reference, forwards, the lower bound and ours / lower bound."""
    best = min(v for v in forwards.values() if isinstance(v, float))
    lines = [f"{'what':<22}{'reference':<28}{'ref ms':>9}{'ours ms':>10}{'ours/ref':>9}{'forwards':>9}"
             f"{'bound ms':>10}{'ours/bound':>11}"]
    for key, value in forwards.items():
        label, ref = REFERENCE.get(key, ("-", None))
        if isinstance(value, str):
            lines.append(f"{key + ' /image':<22}{label:<28}{ref * 1e3:9.2f}  {value}")
            continue
        ratio = f"{value / ref:9.2f}" if ref else f"{'-':>9}"
        ref_ms = f"{ref * 1e3:9.2f}" if ref else f"{'-':>9}"
        lines.append(f"{key + ' /image':<22}{label:<28}{ref_ms}{value * 1e3:10.3f}{ratio}")
    for key, (seconds, count) in explains.items():
        label, ref = REFERENCE[key]
        bound = count * best
        lines.append(f"{key:<22}{label:<28}{ref * 1e3:9.1f}{seconds * 1e3:10.1f}{seconds / ref:9.2f}{count:9d}"
                     f"{bound * 1e3:10.1f}{seconds / bound:11.2f}")
    if dry_run:
        lines.append("dry run on the CPU with a tiny net: the ratios say nothing about the GPU figures.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true", help="tiny net on the CPU: exercise the script only")
    args = parser.parse_args(argv)
    problem = torch_cuda_problem()
    if not args.dry_run and problem is not None:
        sys.exit(f"benchmarks/gpu.py needs CUDA, but {problem.split(';')[0]}. Run it on a machine with a GPU "
                 "and a CUDA build of torch, or pass --dry-run to exercise it on the CPU.")
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        torch.set_num_threads(1)  # a busy CI machine makes torch's spinning thread pool crawl
    width, blocks, size, batch, smooth_n, repeats = \
        (4, (1, 1, 1, 1), 64, 4, 4, 1) if args.dry_run else (64, (3, 4, 6, 3), 224, 32, 50, args.repeats)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = resnet50(width, blocks)
    path = Path(tempfile.mkdtemp()) / "resnet50.onnx"
    export(model, path, size)
    model.to(device)
    explainer = onnxplain.Explainer(path, preprocess="imagenet", device=device, quiet=True, input_size=(size, size))
    layer = explainer.model.auto_layer()[0]
    print(f"ResNet-50-like (width {width}, blocks {blocks}), {size}x{size}, fp32, device {device}, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}; forward-only methods on engine "
          f"{explainer.engine}; layer {layer} ({explainer.model.tensors[layer].shape})")
    forwards = forward_times(model, path, explainer, device, batch, size, repeats, sync)
    image = np.random.default_rng(1).integers(0, 256, (size, size, 3), dtype=np.uint8)
    explains = explain_times(explainer, image, layer, repeats, smooth_n, sync)
    print(report(forwards, explains, args.dry_run))


if __name__ == "__main__":
    main()
