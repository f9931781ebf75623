"""Images: decoding, channel conversion, presets, resize modes, layouts and the map back to pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxplain.errors import ImageError
from onnxplain.images import InputSpec, PRESETS, denormalise, decode, prepare, preset

NCHW = InputSpec("input", "NCHW", 3, (224, 224))


def test_decode_png_bytes_gray_and_rgba(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert np.array_equal(decode(png.tobytes()), rgb)  # decoded as RGB, not BGR
    gray = rgb[:, :, 0]
    path = tmp_path / "g.png"
    cv2.imwrite(str(path), gray)
    batch = prepare([path], NCHW, preset("raw255", resize="stretch"))
    assert batch.x.shape == (1, 3, 224, 224)
    assert np.allclose(batch.x[0, 0], batch.x[0, 1])  # gray became 3 equal channels
    rgba = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    assert prepare([rgba], NCHW, preset("raw255")).x.shape == (1, 3, 224, 224)


def test_bad_images_raise_one_sentence(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="could not be decoded"):
        decode(bad)
    with pytest.raises(ImageError, match="does not exist"):
        decode(tmp_path / "missing.png")
    sentence = "could not be decoded as an image; use a format opencv reads (PNG, JPEG, ...)."
    with pytest.raises(ImageError) as bytes_error:
        decode(b"not an image")
    assert str(bytes_error.value) == f"The image bytes {sentence}"
    with pytest.raises(ImageError) as named_error:   # bytes a batch job read from a file: that file named
        decode(b"not an image", name=bad)
    assert str(named_error.value) == f"Image file '{bad}' {sentence}"
    with pytest.raises(ImageError, match="takes 5-channel images"):
        prepare([np.zeros((8, 8, 3), np.uint8)], InputSpec("x", "NCHW", 5, (8, 8)), preset("raw01"))
    with pytest.raises(ImageError, match="Unknown preprocessing preset"):
        preset("nope")


def test_presets_normalise_known_values():
    pixel = np.full((4, 4, 3), [255, 128, 0], np.uint8)
    spec = InputSpec("x", "NCHW", 3, (4, 4))
    imagenet = prepare([pixel], spec, preset("imagenet", resize="stretch")).x[0, :, 0, 0]
    np.testing.assert_allclose(imagenet, [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, -0.406 / 0.225],
                               rtol=1e-5)
    caffe = prepare([pixel], spec, preset("caffe", resize="stretch")).x[0, :, 0, 0]
    np.testing.assert_allclose(caffe, [0 - 103.939, 128 - 116.779, 255 - 123.68], rtol=1e-5)  # BGR order
    lite = prepare([pixel], spec, preset("effnet-lite", resize="stretch")).x[0, :, 0, 0]
    np.testing.assert_allclose(lite, [1.0, 1 / 128, -127 / 128], rtol=1e-5)
    for name in PRESETS:  # every preset inverts exactly on valid pixels
        x = prepare([pixel], spec, preset(name, resize="stretch")).x[0]
        assert np.array_equal(denormalise(x, preset(name)), pixel)


def test_nhwc_layout():
    spec = InputSpec.from_shape("input:0", [None, 32, 32, 3])
    assert spec.layout == "NHWC" and spec.size == (32, 32)
    x = prepare([np.zeros((10, 10, 3), np.uint8)], spec, preset("raw01")).x
    assert x.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("mode", ["stretch", "crop", "letterbox"])
def test_heatmap_maps_back_onto_the_original(mode):
    """A mark at a known original pixel lands where the model input shows it, and comes back."""
    original = np.zeros((300, 451, 3), np.uint8)
    cv2.circle(original, (300, 120), 6, (255, 255, 255), -1)
    batch = prepare([original], NCHW, preset("raw255", resize=mode))
    seen = batch.x[0, 0]
    r, c = np.unravel_index(np.argmax(cv2.GaussianBlur(seen, (9, 9), 3)), seen.shape)
    back = batch.pixel_maps[0].to_original(cv2.GaussianBlur(seen, (9, 9), 3))
    assert back.shape == (300, 451)
    br, bc = np.unravel_index(np.argmax(back), back.shape)
    assert abs(br - 120) <= 3 and abs(bc - 300) <= 3, (mode, br, bc)
    x1, y1, x2, y2 = batch.pixel_maps[0].box_to_input((300, 120, 300, 120))
    assert abs(x1 - c) <= 2 and abs(y1 - r) <= 2
