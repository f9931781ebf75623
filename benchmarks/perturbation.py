"""Perturbation methods: ours on onnxruntime against captum and against their own lower bound.

A ResNet-18-like network in plain torch (seeded random weights, 224x224 input) is exported to ONNX. In
one process we time, on skimage's chelsea:
  occlusion (16x16 windows, stride 8: 729 windows, zero fill, logits)  vs  captum Occlusion on the torch
    model, with its default perturbations_per_eval=1 and with our batch size;
  occlusion, rise (n=4000), smoothgrad-fd (n=256 pairs) and, when registered, score-cam  vs  their lower
    bound: forwards run x onnxruntime's per-image time at the best batch size (measured just before).
and Recipro-CAM against Score-CAM on the same ResNet-18 and on the bundled EfficientNet-Lite0 (trained: most
of its last layer's channels are zero on a photo, and Score-CAM runs one forward per distinct mask).
Targets (issue 4): occlusion >= 3x faster than captum, each method within 1.1x of its lower bound,
Recipro-CAM >= 20x faster than Score-CAM.
pytorch-grad-cam's ScoreCAM needs torchvision; when `pytorch_grad_cam` is not importable that
comparison is skipped with a note.

    python benchmarks/perturbation.py [--rise-n 4000] [--batches 1,8,16,32,64] [--skip-captum]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage import data
from torch import nn

import onnxplain
from onnxplain.errors import MethodError
from onnxplain.methods import get as get_method
from nets import export, resnet18

MODELS = Path(__file__).resolve().parent.parent / "models"


def per_image_seconds(explainer: onnxplain.Explainer, batch: int, repeats: int = 3) -> float:
    """onnxruntime's best seconds per image at one batch size (the session the methods use, warmed up)."""
    session = explainer.runtime.session(explainer.runtime.output_names)
    x = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    feed = {explainer.runtime.input_names[0]: x}
    session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - start)
    return best / batch


def torch_per_image_seconds(model: nn.Module, batch: int, repeats: int = 3) -> float:
    """torch's best seconds per image at one batch size: with onnxruntime's, it bounds how much faster
    than the torch-based libraries any method that runs the same forwards can be."""
    x = torch.randn(batch, 3, 224, 224)
    best = float("inf")
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return best / batch


class OrtClock:
    """Seconds spent inside the runtime's `run` (onnxruntime plus its batching), to separate our own cost
    from onnxruntime's: unlike the ratio to the lower bound, that split does not move with the machine's load."""

    def __init__(self, explainer: onnxplain.Explainer):
        self.seconds = 0.0
        run = explainer.runtime.run

        def timed_run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        explainer.runtime.run = timed_run


def timed_explain(explainer: onnxplain.Explainer, clock: OrtClock, image: np.ndarray, method: str,
                  **params) -> tuple[float, float, int]:
    """Wall seconds of one explain call (the image prepared anew, so its forward counts), seconds inside
    onnxruntime, and forwards run."""
    before, ort_before = explainer.runtime.forwards, clock.seconds
    start = time.perf_counter()
    explainer.explain([image], method=method, **params)
    return time.perf_counter() - start, clock.seconds - ort_before, explainer.runtime.forwards - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rise-n", type=int, default=4000)
    parser.add_argument("--batches", default="1,8,16,32,64")
    parser.add_argument("--skip-captum", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = resnet18()
    image = data.chelsea()
    with tempfile.TemporaryDirectory() as folder:
        path = export(model, Path(folder) / "resnet18.onnx")
        probe = onnxplain.Explainer(path, preprocess="imagenet", device="cpu", quiet=True)
        sizes = [int(b) for b in args.batches.split(",")]
        times = {b: per_image_seconds(probe, b) for b in sizes}
        best = min(times, key=times.get)
        print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
              f"load average: {os.getloadavg()[0]:.1f}")
        print("onnxruntime ms/image by batch: " + ", ".join(f"{b}: {t * 1e3:.1f}" for b, t in times.items())
              + f" -> best batch {best}")
        ex = onnxplain.Explainer(path, preprocess="imagenet", device="cpu", quiet=True, batch_size=best)
        ex.explain([image], method="occlusion", window=(112, 112), stride=(112, 112))  # warm the session up

        occlusion = dict(window=(16, 16), stride=(8, 8), fill="zero", score="logit")
        runs = [("occlusion", occlusion), ("rise", {"n": args.rise_n}), ("smoothgrad-fd", {})]
        try:
            get_method("score-cam")
            runs.append(("score-cam", {}))
        except MethodError:
            print("score-cam is not registered yet: skipped")
        ours = {}
        clock = OrtClock(ex)
        print("\nlower bound = forwards x per-image time at the best batch (mean of the measures taken just "
              "before and just after); ours = time outside onnxruntime's run")
        print(f"{'method':<14} {'forwards':>8} {'seconds':>9} {'lower bound':>12} {'ratio':>6} {'ours':>7}")
        for method, params in runs:
            per_image = per_image_seconds(ex, best)
            seconds, in_ort, forwards = timed_explain(ex, clock, image, method, **params)
            per_image = (per_image + per_image_seconds(ex, best)) / 2
            bound = forwards * per_image
            ours[method] = seconds
            flag = "" if seconds / bound <= 1.1 else "  (target 1.1)"
            print(f"{method:<14} {forwards:>8} {seconds:>9.2f} {bound:>12.2f} {seconds / bound:>6.2f} "
                  f"{(seconds - in_ort) / seconds:>6.1%}{flag}")

        compare_recipro({"ResNet-18 (random weights)": ex,
                         "EfficientNet-Lite0": onnxplain.Explainer(MODELS / "efficientnet_lite0.onnx", device="cpu",
                                                                   quiet=True, batch_size=best)}, image)
        torch_times = {b: torch_per_image_seconds(model, b) for b in (1, best)}
        ort_time = per_image_seconds(ex, best)
        print("\ntorch ms/image: " + ", ".join(f"batch {b}: {t * 1e3:.1f}" for b, t in torch_times.items())
              + f"; onnxruntime {ort_time * 1e3:.1f} at batch {best}: with the same forwards, ours can be at most "
              f"{torch_times[1] / ort_time:.1f}x faster than a library forwarding one at a time and "
              f"{torch_times[best] / ort_time:.1f}x than one batching {best}")
        x = torch.from_numpy(ex.prepare([image]).x)
        target = int(ex.predict([image])[0].top[0][0])
        if not args.skip_captum:
            compare_captum(ex, model, x, image, target, occlusion, ours["occlusion"], best)
        if "score-cam" in ours:
            compare_grad_cam(model, x, target, ours["score-cam"], best)


def compare_recipro(explainers: dict[str, onnxplain.Explainer], image: np.ndarray) -> None:
    """Recipro-CAM (one tail forward per layer position) against Score-CAM (one forward per distinct mask)."""
    print("\nRecipro-CAM against Score-CAM (auto layer):")
    for name, explainer in explainers.items():
        explainer.explain([image], method="recipro-cam")  # warm both sessions up
        start = time.perf_counter()
        [recipro] = explainer.explain([image], method="recipro-cam")
        fast = time.perf_counter() - start
        start = time.perf_counter()
        [score] = explainer.explain([image], method="score-cam")
        slow = time.perf_counter() - start
        print(f"  {name:<27} score-cam {slow:6.2f} s ({score.extras['channels']} channels, "
              f"{score.extras['forwards']} forwards)   recipro-cam {fast:5.2f} s   ratio {slow / fast:5.1f}x "
              "(target >= 20)")


def compare_captum(ex: onnxplain.Explainer, model: nn.Module, x: torch.Tensor, image: np.ndarray, target: int,
                   occlusion: dict, ours: float, best: int) -> None:
    """captum's Occlusion on the torch model, same windows, at its default and at our batch size."""
    try:
        from captum.attr import Occlusion
    except ImportError:
        print("\ncaptum is not importable (pip install --no-deps captum; it imports matplotlib): skipped")
        return
    print(f"\ncaptum Occlusion on the torch model, same 729 windows (torch {torch.__version__}):")
    reference = None
    for per_eval in (1, best):
        start = time.perf_counter()
        attribution = Occlusion(model).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                 baselines=0.0, target=target, perturbations_per_eval=per_eval)
        seconds = time.perf_counter() - start
        reference = attribution[0, 0].detach().numpy()
        print(f"  perturbations_per_eval={per_eval:<3} {seconds:8.2f} s   ours {ours:.2f} s   "
              f"captum / ours = {seconds / ours:.1f}x (target >= 3)")
    [mine] = ex.explain([image], method="occlusion", target=target, **occlusion)
    difference = np.abs(mine.raw - reference).max() / np.abs(reference).max()
    print(f"  maps agree: max |ours - captum| / max |captum| = {difference:.1e}")


def compare_grad_cam(model: nn.Module, x: torch.Tensor, target: int, ours: float, best: int) -> None:
    """pytorch-grad-cam's ScoreCAM on the torch model's last block, when the package can be imported."""
    try:
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        print("\npytorch-grad-cam is not importable (it needs torchvision, which breaks this torch set-up): "
              "Score-CAM comparison skipped")
        return
    with ScoreCAM(model=model, target_layers=[model.layer4]) as cam:
        cam.batch_size = best
        start = time.perf_counter()
        cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])
        seconds = time.perf_counter() - start
    print(f"\npytorch-grad-cam ScoreCAM (batch {best}): {seconds:.2f} s   ours {ours:.2f} s   "
          f"theirs / ours = {seconds / ours:.1f}x")


if __name__ == "__main__":
    main()
