"""Recipro-CAM: onnxplain against OpenVINO-XAI 1.1 (white-box recipro-cam), same ONNX model, same layer, one run.

OpenVINO-XAI needs numpy 1.x, so it runs from its own environment, never a dependency of the project:

    python -m venv /work/ovxai-venv && /work/ovxai-venv/bin/pip install openvino-xai==1.1.0 onnx
    PYTHONPATH=.:converters python benchmarks/recipro_vs_ovxai.py [--rounds 5] [--vit-rounds 2] [--venv DIR]

Models: the bundled EfficientNet-Lite0 at its auto layer (OpenVINO-XAI's ReciproCAM: one-hot masks, logits,
so ours runs mask=binary, softmax=false) and a ViT-B/16 layout (plain torch, seeded random weights, legacy
export) at the output of block 11, the input of the last block (ViTReciproCAM's default block, k=1; Gaussian
masks, logits). OpenVINO-XAI inserts the masked batch and the tail into the graph and returns every class's
map from one inference. A worker process in that environment compiles the model once; rounds then
alternate: ours (a fresh preprocessed batch: the forward and the tail on every masked map, one map and its
heatmap), ours for every class (the raw maps of every class, as theirs), theirs (one inference, every class). Medians per image, the load average
(the machine is shared) and our/their ratios are printed (issue 23's target: <= 1.0x).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage import data

import onnxplain
from nets import export, vit_b16

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "ovxai_recipro_worker.py"
VENV = Path(os.environ.get("OVXAI_VENV", "/work/ovxai-venv"))


def venv_python(venv: Path) -> Path | None:
    """The OpenVINO-XAI environment's python, or None (with the reason printed) when it cannot import it."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"skipped: no OpenVINO-XAI environment at {venv}; create it as this script's docstring says.")
        return None
    check = subprocess.run([str(python), "-c", "import openvino_xai, openvino, onnx"], capture_output=True, text=True)
    if check.returncode:
        print(f"skipped: {python} cannot import openvino_xai, openvino and onnx: {check.stderr.strip()[-200:]}")
        return None
    return python


def every_class(ex: onnxplain.Explainer, batch, layer: str, params: dict):
    """Every class's raw map from one Recipro-CAM pass (the maps OpenVINO-XAI returns; Explainer.explain with
    target all also builds an upsampled and an original-size heatmap per class, which this leaves out)."""
    from onnxplain.methods.recipro import ReciproCAM
    from onnxplain.targets import ClassTarget
    classes = ex.forward(batch)[ex.model.outputs[0].name].shape[-1]
    targets = [[ClassTarget(ex.model.outputs[0].name, index=c) for c in range(classes)]]
    return ReciproCAM(ReciproCAM.make_params(**params)).explain_many(ex, batch, targets, layer)


def compare(name: str, python: Path, path: Path, kind: str, layer: str, rounds: int, params: dict) -> None:
    """Alternating rounds of ours (one target, every class) and theirs; medians, ratios and map agreement."""
    ex = onnxplain.Explainer(path, preprocess="imagenet" if kind == "vit" else None, device="cpu", quiet=True)
    image = data.chelsea()
    x = ex.prepare([image]).x
    ex.explain([image], "recipro-cam", layer=layer, **params)  # sessions and the tail built before timing
    with tempfile.TemporaryDirectory() as folder:
        feed, out = Path(folder) / "x.npy", Path(folder) / "maps.npz"
        np.save(feed, x)
        worker = subprocess.Popen([str(python), str(WORKER), str(path), kind, layer, str(feed), str(rounds + 1),
                                   str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def theirs() -> float:
            worker.stdin.write("\n")
            worker.stdin.flush()
            return float(worker.stdout.readline())

        if worker.stdout.readline().strip() != "ready":
            raise SystemExit(f"the OpenVINO-XAI worker failed on {name}")
        theirs()  # warm-up inference
        times: dict[str, list[float]] = {"ours": [], "ours, top-5": [], "ours, every class": [], "OpenVINO-XAI": []}
        for _ in range(rounds):
            batch = ex.prepare([image])  # preprocessed outside the timing, as theirs is fed; nothing cached
            start = time.perf_counter()
            one = ex.explain(batch, "recipro-cam", layer=layer, **params)
            times["ours"].append(time.perf_counter() - start)
            batch = ex.prepare([image])
            start = time.perf_counter()
            ex.explain(batch, "recipro-cam", layer=layer, target="top5", **params)
            times["ours, top-5"].append(time.perf_counter() - start)
            batch = ex.prepare([image])
            start = time.perf_counter()
            every = every_class(ex, batch, layer, params)
            times["ours, every class"].append(time.perf_counter() - start)
            times["OpenVINO-XAI"].append(theirs())
        worker.stdin.close()
        worker.wait()
        maps = np.load(out)["maps"][0]
    med = {k: statistics.median(v) for k, v in times.items()}
    ours_maps = every.maps
    print(f"\n{name}: layer '{layer}' ({one[0].raw.shape[0]}x{one[0].raw.shape[1]}), load average "
          f"{os.getloadavg()[0]:.1f}")
    for key, value in med.items():
        print(f"  {key:<18} {value * 1000:8.1f} ms per image   (rounds: {', '.join(f'{t * 1000:.0f}' for t in times[key])})")
    print(f"  ours / OpenVINO-XAI              = {med['ours'] / med['OpenVINO-XAI']:.2f}x (target <= 1.0)")
    print(f"  ours top-5 / ours one target     = {med['ours, top-5'] / med['ours']:.2f}x (target <= 1.1)")
    print(f"  ours every class / OpenVINO-XAI  = {med['ours, every class'] / med['OpenVINO-XAI']:.2f}x")
    error = np.abs(ours_maps - maps).max() / np.abs(maps).max()
    print(f"  maps (every class): max |ours - theirs| / max |theirs| = {error:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vit-rounds", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--skip-vit", action="store_true")
    args = parser.parse_args()
    python = venv_python(args.venv)
    if python is None:
        return
    print(f"CPU count {os.cpu_count()}, onnxplain on onnxruntime, OpenVINO-XAI from {python}")
    compare("EfficientNet-Lite0", python, ROOT / "models" / "efficientnet_lite0.onnx", "cnn",
            "/_swish_1/Clip_output_0", args.rounds, {"mask": "binary", "softmax": False})
    if not args.skip_vit:
        with tempfile.TemporaryDirectory() as folder:
            path = export(vit_b16(), Path(folder) / "vit_b16.onnx")
            compare("ViT-B/16 layout", python, path, "vit", "/blocks/blocks.10/Add_1_output_0", args.vit_rounds,
                    {"mask": "gaussian", "softmax": False})


if __name__ == "__main__":
    main()
