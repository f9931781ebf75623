"""Shared fixtures: tiny exported models (once per session) and the real bundled model."""
from __future__ import annotations

from pathlib import Path

import pytest

import helpers  # tests/ is on sys.path after the repository and converters/ (pyproject: pythonpath), so
import real_models  # tests/onnxtorch and tests/onnxplain never shadow the packages of the same names


@pytest.fixture(scope="session")
def region_model(tmp_path_factory) -> Path:
    """RegionNet exported by the legacy exporter, opset 17, dynamic batch, 3x32x32 input."""
    return helpers.export(helpers.RegionNet(), tmp_path_factory.mktemp("region") / "region.onnx")


@pytest.fixture(scope="session")
def nhwc_model(tmp_path_factory) -> Path:
    """RegionNet behind an NHWC input (1x32x32x3)."""
    return helpers.export(helpers.NHWCNet(), tmp_path_factory.mktemp("nhwc") / "nhwc.onnx", shape=(1, 32, 32, 3))


@pytest.fixture(scope="session")
def effnet() -> Path:
    """The bundled EfficientNet-Lite0 (ImageNet, preset and labels in its metadata)."""
    return real_models.EFFICIENTNET_LITE0


@pytest.fixture(scope="module")
def effnet_explainer(effnet):
    """An Explainer on the bundled EfficientNet-Lite0, one per test module (the serve and KServe tests share it)."""
    import onnxplain
    return onnxplain.load(effnet, quiet=True)
