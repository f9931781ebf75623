"""OpenVINO-XAI's Recipro-CAM side of benchmarks/recipro_vs_ovxai.py, run by the OpenVINO-XAI environment's python.

    python ovxai_recipro_worker.py MODEL.onnx KIND LAYER INPUT.npy ROUNDS OUT.npz

KIND is cnn (ReciproCAM) or vit (ViTReciproCAM). Reads the ONNX file with OpenVINO, inserts the recipro-cam
branch after LAYER (white box), compiles it once, then waits for one line per round on stdin and answers with
the seconds of one inference of INPUT (every class's map) on stdout, timed after an untimed one, so the parent can alternate rounds.
Writes the last maps (classes, h, w) to OUT.npz.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import openvino as ov
from openvino_xai.common.utils import SALIENCY_MAP_OUTPUT_NAME
from openvino_xai.methods.white_box.recipro_cam import ReciproCAM, ViTReciproCAM


def friendly_name(model: "ov.Model", tensor: str) -> str:
    """The OpenVINO op that makes the ONNX tensor `tensor` (OpenVINO-XAI addresses layers by op name)."""
    for op in model.get_ordered_ops():
        if any(tensor in output.get_names() for output in op.outputs()):
            return op.get_friendly_name()
    raise SystemExit(f"OpenVINO read no op making tensor '{tensor}'.")


def main() -> None:
    path, kind, layer, data, rounds, out = sys.argv[1:7]
    core = ov.Core()
    model = core.read_model(path)
    model.reshape({model.input(0): ov.PartialShape([-1] + list(model.input(0).get_partial_shape())[1:])})
    layer = friendly_name(model, layer) if layer else None
    if kind == "cnn":
        method = ReciproCAM(model, target_layer=layer, embed_scaling=False, prepare_model=False)
    else:
        method = ViTReciproCAM(model, target_layer=layer, embed_scaling=False, prepare_model=False)
    xai_model = method.prepare_model(load_model=False)
    compiled = core.compile_model(xai_model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.load(data)
    print("ready", flush=True)
    maps = None
    for _ in range(int(rounds)):
        sys.stdin.readline()
        request.infer({0: x})  # untimed, right before the timed one (see recipro_vs_ovxai.py)
        start = time.perf_counter()
        result = request.infer({0: x})
        maps = result[compiled.output(SALIENCY_MAP_OUTPUT_NAME)]
        print(f"{time.perf_counter() - start:.6f}", flush=True)
    np.savez(out, maps=np.asarray(maps, np.float32))


if __name__ == "__main__":
    main()
