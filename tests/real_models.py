"""Real models shipped inside registry packages, fetched once into .cache/.

The packages that carry them drag in what breaks this set-up (rapidocr-onnxruntime
depends on onnxruntime, facenet-pytorch on torchvision), so their wheels are
taken with `pip download --no-deps` and read from the unpacked folder.
"""
from __future__ import annotations

import fcntl
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "packages"
EFFICIENTNET_LITE0 = ROOT / "models" / "efficientnet_lite0.onnx"
IMAGENET_LABELS = ROOT / "models" / "imagenet_classes.txt"


def unpack(package: str) -> Path:
    """Download one wheel (no dependencies) and unpack it once; returns its folder."""
    target = CACHE / package
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), package],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wheel = sorted(CACHE.glob(package.replace("-", "_") + "-*.whl"))[-1]
            zipfile.ZipFile(wheel).extractall(target)
    return target


def onnx_backend_wheel() -> Path:
    """The onnx 1.22.0 wheel (the last that ships the backend node test data), downloaded once, not unpacked:
    the suite reads onnx/backend/test/data/node/*/ straight from the zip."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wheels = sorted(CACHE.glob("onnx-1.22.0-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE),
                            "onnx==1.22.0"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wheels = sorted(CACHE.glob("onnx-1.22.0-*.whl"))
    return wheels[-1]


def ppocr_cls() -> Path:
    """PP-OCR mobile v2.0 direction classifier: Paddle export, opset 11, weights in Constant nodes.

    Input N x 3 x 48 x 192, preprocessing (x/255 - 0.5)/0.5, RGB.
    """
    return unpack("rapidocr-onnxruntime") / "rapidocr_onnxruntime" / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"


def ppocr_det() -> Path:
    """PP-OCRv4 text detector (Paddle export): N x 3 x H x W -> N x 1 x H x W probability map."""
    return unpack("rapidocr-onnxruntime") / "rapidocr_onnxruntime" / "models" / "ch_PP-OCRv4_det_infer.onnx"


def ppocr_rec() -> Path:
    """PP-OCRv4 text recogniser (Paddle export): N x 3 x 48 x W -> N x T x 6625 softmax (CTC, blank at 0).

    Its 6623-entry dictionary is the `character` metadata entry (newline-separated); a space ends it.
    """
    return unpack("rapidocr-onnxruntime") / "rapidocr_onnxruntime" / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def _mtcnn_classes() -> dict:
    """PNet/RNet/ONet classes from facenet-pytorch's source, without importing the package (torchvision)."""
    source = (unpack("facenet-pytorch") / "facenet_pytorch" / "models" / "mtcnn.py").read_text()
    source = source.split("class MTCNN(")[0].replace("from .utils.detect_face import detect_face, extract_face", "")
    namespace: dict = {}
    exec(compile(source, "facenet_pytorch/models/mtcnn.py", "exec"), namespace)
    return namespace


def mtcnn_net(name: str) -> torch.nn.Module:
    """MTCNN's 'pnet', 'rnet' or 'onet' with its shipped weights, in eval mode."""
    net = _mtcnn_classes()[name.upper().replace("NET", "Net")](pretrained=False)
    weights = unpack("facenet-pytorch") / "facenet_pytorch" / "data" / f"{name}.pt"
    net.load_state_dict(torch.load(weights, map_location="cpu"))
    return net.eval()


def mtcnn_onnx(name: str) -> Path:
    """MTCNN net exported once by the legacy exporter (opset 17, dynamic batch; P-Net also dynamic H, W)."""
    path = CACHE / f"mtcnn_{name}.onnx"
    if not path.exists():
        net = mtcnn_net(name)
        size = {"pnet": 48, "rnet": 24, "onet": 48}[name]
        axes = {"input": {0: "batch"}}
        if name == "pnet":
            axes["input"].update({2: "height", 3: "width"})
        tmp = path.with_suffix(".tmp.onnx")
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(tmp), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes=axes)
        tmp.rename(path)
    return path
