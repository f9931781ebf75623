"""Hostile inputs for the hostile-input tests: tiny ONNX classifiers written with onnx.helper (broken in one way
each), decompression bombs, broken label files, and the files they are written to."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from onnx import TensorProto, helper, numpy_helper


def tiny(opset: int = 17, extra_input: bool = False, dims=("N", 3, 32, 32), weight: float | None = None,
         classes: int = 3, outputs: bool = True, bias: float | None = None) -> bytes:
    """A conv -> relu -> GAP -> linear classifier; `weight` replaces one conv weight, `bias` the first class's
    bias (NaN, inf)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    if weight is not None:
        w[0, 0, 0, 0] = weight
    inits = [numpy_helper.from_array(w, "conv.weight"), numpy_helper.from_array(np.zeros(8, np.float32), "conv.bias"),
             numpy_helper.from_array(rng.normal(size=(classes, 8)).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(np.array([bias or 0] + [0] * (classes - 1), np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1)]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1]))
        nodes[-1:] = [helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["pre"], transB=1),
                      helper.make_node("Mul", ["pre", "scale"], ["logits"])]
    out = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])] if outputs else []
    graph = helper.make_graph(nodes, "tiny", inputs, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8).SerializeToString()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (its pixel data is a few bytes): a bomb by its header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def bomb(side: int = 2000) -> bytes:
    """A real decompression bomb at test scale: side x side black pixels in a few kilobytes."""
    return png(np.zeros((side, side), np.uint8))


IMAGE = np.full((40, 50, 3), 120, np.uint8)
IMAGE[5:20, 10:30] = (250, 30, 30)


def write_inputs(root: Path) -> dict[str, Path]:
    """Every model and input file the hostile corpus uses, written into `root`."""
    made = {"ok": tiny(), "opset": tiny(opset=30), "extra": tiny(extra_input=True),
            "dims": tiny(dims=("N", 3, 10**12, 10**12)), "nan": tiny(weight=float("nan")),
            "noout": tiny(outputs=False), "ten": tiny(classes=10), "inf": tiny(bias=float("inf"))}
    paths = {}
    for name, data in made.items():
        paths[name] = root / f"{name}.onnx"
        paths[name].write_bytes(data)
    paths["image"] = root / "image.png"
    paths["image"].write_bytes(png(IMAGE))
    paths["header_bomb"] = root / "claims.png"
    paths["header_bomb"].write_bytes(png_header(100_000, 100_000))
    paths["bomb"] = root / "bomb.png"
    paths["bomb"].write_bytes(bomb())
    paths["labels_json"] = root / "labels.json"
    paths["labels_json"].write_text('["a", "b",', encoding="utf-8")
    paths["labels_latin1"] = root / "labels.txt"
    paths["labels_latin1"].write_bytes("caf\xe9\nth\xe9\n".encode("latin-1"))
    paths["folder"] = root / "folder"
    paths["folder"].mkdir()
    paths["a_file"] = root / "a_file.txt"
    paths["a_file"].write_text("x")
    images = root / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.png"), np.roll(IMAGE, 7 * i, axis=1))
    paths["images"] = images
    return paths
