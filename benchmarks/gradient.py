"""Gradient methods side by side: ours on the ONNX export vs the reference libraries on the native torch model.

A ResNet-18-like network in plain torch (seeded weights, 224x224 input) is exported to ONNX;
in one process we time
  Grad-CAM:   onnxplain (converted module, layer4 tapped)  vs  pytorch-grad-cam GradCAM(model, [layer4])
  SmoothGrad: onnxplain (n=50, batch 25)                    vs  captum NoiseTunnel(Saliency) (50 samples, batch 25)
  Integrated gradients: onnxplain (50 steps, batch 25)      vs  captum IntegratedGradients (50 steps, batch 25)
and print the median wall time of each and the ratio ours / reference (below 1: we are faster).
Libraries that are not importable are skipped. pytorch-grad-cam needs torchvision, so run this from a
separate venv that has it (see tests/fixtures/make_gradcam_reference.py for one):

    /tmp/refenv/bin/python benchmarks/gradient.py [--device cpu|cuda] [--batch 8] [--repeats 5]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import onnxplain
from nets import export, resnet18, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8, help="images per Grad-CAM call")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = resnet18().to(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    folder = Path(tempfile.mkdtemp())
    export(model.cpu(), folder / "resnet18.onnx")
    model.to(args.device)
    explainer = onnxplain.Explainer(folder / "resnet18.onnx", device=args.device, quiet=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(args.batch)]
    batch = explainer.prepare(images)
    x = torch.from_numpy(batch.x).to(args.device)
    targets = [int(t) for t in rng.integers(0, 1000, args.batch)]
    layer = explainer.model.auto_layer()[0]
    print(f"ResNet-18-like, {args.batch} x 3 x 224 x 224, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; layer {layer}")
    rows = []

    ours = timed(lambda: explainer.explain(batch, method="grad-cam", target=targets, layer=layer), args.repeats, sync)
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        cam = GradCAM(model=model, target_layers=[model.layer4])
        wanted = [ClassifierOutputTarget(t) for t in targets]
        ref = timed(lambda: cam(input_tensor=x, targets=wanted), args.repeats, sync)
        rows.append((f"Grad-CAM, {args.batch} images", "pytorch-grad-cam", ours, ref))
    except ImportError as exc:
        rows.append((f"Grad-CAM, {args.batch} images", f"pytorch-grad-cam missing ({exc.name})", ours, None))

    one = explainer.prepare(images[:1])
    smooth = timed(lambda: explainer.explain(one, method="smoothgrad", target=targets[0], n=50, batch_size=25),
                   args.repeats, sync)
    ig = timed(lambda: explainer.explain(one, method="integrated-gradients", target=targets[0], steps=50,
                                         batch_size=25), args.repeats, sync)
    try:
        from captum.attr import IntegratedGradients, NoiseTunnel, Saliency
        std = 0.15 * float(x[0].max() - x[0].min())
        tunnel = NoiseTunnel(Saliency(model))
        ref = timed(lambda: tunnel.attribute(x[:1], nt_type="smoothgrad", nt_samples=50, nt_samples_batch_size=25,
                                             stdevs=std, target=targets[0], abs=False), args.repeats, sync)
        rows.append(("SmoothGrad, n=50, 1 image", "captum NoiseTunnel", smooth, ref))
        base = torch.from_numpy(onnxplain.images.normalise(np.zeros((1, 1, 3), np.uint8), batch.preprocess)
                                .reshape(1, 3, 1, 1)).to(args.device).expand_as(x[:1])
        integrated = IntegratedGradients(model)
        ref = timed(lambda: integrated.attribute(x[:1], baselines=base, target=targets[0], n_steps=50,
                                                 internal_batch_size=25), args.repeats, sync)
        rows.append(("Integrated gradients, 50 steps, 1 image", "captum", ig, ref))
    except ImportError as exc:
        rows.append(("SmoothGrad, n=50, 1 image", f"captum missing ({exc.name})", smooth, None))

    print(f"{'method':<42}{'reference':<22}{'ours ms':>10}{'ref ms':>10}{'ours/ref':>10}")
    for what, reference, ours, ref in rows:
        ratio = f"{ours / ref:10.2f}" if ref else f"{'-':>10}"
        ref_ms = f"{ref * 1e3:10.1f}" if ref else f"{'-':>10}"
        print(f"{what:<42}{reference:<22}{ours * 1e3:10.1f}{ref_ms}{ratio}")


if __name__ == "__main__":
    main()
