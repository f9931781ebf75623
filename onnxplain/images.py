"""Images in, model batches out: decoding, presets, resizing, layout, and the way back to pixels.

Every prepared image keeps the affine map from the original image to model-input
pixels, so a heatmap at input resolution is warped back onto the original exactly.
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .errors import ImageError
from .limits import CLI, Limits, PixelLimitError, Remedy

ImageSource = str | os.PathLike | bytes | np.ndarray


@dataclass(frozen=True)
class Preprocess:
    """How raw RGB uint8 pixels become model input: x = (pixel * scale - mean) / std, per channel."""
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    scale: float = 1.0
    order: str = "RGB"           # colour order the model expects: RGB or BGR
    resize: str = "crop"         # stretch | crop (shorter side, then centre crop) | letterbox
    resize_shorter: float = 256 / 224  # crop mode: shorter side = input size x this
    size: tuple[int, int] | None = None  # (H, W) when the model's input dims are symbolic


PRESETS: dict[str, Preprocess] = {
    "imagenet": Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=1 / 255),
    "raw01": Preprocess(scale=1 / 255, resize="stretch"),
    "raw255": Preprocess(resize="stretch"),
    "caffe": Preprocess(mean=(103.939, 116.779, 123.68), order="BGR"),
    "minus1to1": Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), scale=1 / 255),
    "effnet-lite": Preprocess(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0)),
    "facenet": Preprocess(mean=(127.5, 127.5, 127.5), std=(128.0, 128.0, 128.0)),  # facenet-pytorch's MTCNN
}


def preset(name: str | Preprocess | None, **overrides) -> Preprocess:
    """A named preset (or a Preprocess) with optional field overrides."""
    if isinstance(name, Preprocess):
        base = name
    else:
        if name not in PRESETS:
            raise ImageError(f"Unknown preprocessing preset '{name}'; use one of {', '.join(PRESETS)}.")
        base = PRESETS[name]
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class PixelMap:
    """Affine map from original-image pixels to model-input pixels (2x3), and both sizes."""
    matrix: np.ndarray
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    scale: float = 1.0  # original_hw is the decoded image's size times this (bounded for huge originals)

    def to_original(self, heatmap: np.ndarray) -> np.ndarray:
        """Warp a map at model-input resolution (any size, resized first) back onto the original image."""
        h, w = self.input_hw
        if heatmap.shape[:2] != (h, w):
            heatmap = cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        oh, ow = self.original_hw
        return cv2.warpAffine(heatmap.astype(np.float32), self.matrix, (ow, oh),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)

    def valid_original(self) -> np.ndarray:
        """Original pixels the model saw (inside the model input after the preset's crop), as a bool mask:
        outside it a back-mapped map has no value, so nothing is drawn there."""
        h, w = self.input_hw
        oh, ow = self.original_hw
        seen = cv2.warpAffine(np.ones((h, w), np.float32), self.matrix, (ow, oh),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=0)
        return seen > 0.5

    def box_to_input(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """An (x1, y1, x2, y2) box in original pixels, in model-input pixels."""
        box = [float(v) * self.scale for v in box[:4]]
        (x1, y1), (x2, y2) = (self.matrix @ np.array([[box[0], box[2]], [box[1], box[3]], [1, 1]])).T
        return float(x1), float(y1), float(x2), float(y2)


@dataclass(frozen=True)
class InputSpec:
    """What the model's image input looks like: layout, channels, size."""
    name: str
    layout: str            # NCHW or NHWC
    channels: int
    size: tuple[int, int] | None  # None when symbolic

    @classmethod
    def from_shape(cls, name: str, shape: Sequence) -> "InputSpec":
        if len(shape) != 4:
            raise ImageError(f"Input '{name}' has rank {len(shape)}, not an image batch (N, C, H, W or N, H, W, C).")
        nhwc = shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4)
        c, h, w = (shape[3], shape[1], shape[2]) if nhwc else (shape[1], shape[2], shape[3])
        size = (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
        return cls(name, "NHWC" if nhwc else "NCHW", c if isinstance(c, int) else 3, size)


def decode(source: ImageSource, limits: Limits | None = None, name: str | os.PathLike | None = None) -> np.ndarray:
    """An RGB (or gray / RGBA as decoded) uint8 array from a path, encoded bytes or an array.

    Encoded images are checked against `limits.max_pixels` from their header before decoding, and JPEG
    EXIF orientation is applied, so portrait photos reach the model upright. `name` is the file encoded
    bytes were read from (a batch job reads them itself): error sentences then name that file, as for a path.
    """
    limits = limits or Limits()
    if isinstance(source, np.ndarray):
        return _from_array(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "The image bytes" if name is None else f"Image file '{name}'"
        data = np.frombuffer(bytes(source), np.uint8)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"Image path '{path}' is a folder, not a file; pass the image files in it.")
        if not path.is_file():
            raise ImageError(f"Image file '{path}' does not exist; check the path.")
        data, label = np.fromfile(str(path), np.uint8), f"Image file '{path}'"
    else:
        raise ImageError(f"An image must be a path, encoded bytes or a numpy array, not {type(source).__name__}.")
    orientation = _check_header(data.tobytes(), "The image" if label == "The image bytes" else label, limits)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageError(f"{label} could not be decoded as an image; use a format opencv reads (PNG, JPEG, ...).")
    if image.dtype != np.uint8:
        image = (image / (256 if image.dtype == np.uint16 else 1)).clip(0, 255).astype(np.uint8)
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
        image = cv2.cvtColor(image, code)
    return np.ascontiguousarray(orient(image, orientation))


def _from_array(image: np.ndarray, limits: Limits) -> np.ndarray:
    """A uint8 image from an array (floats in [0, 1] scaled to 255), its shape and values checked."""
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or 0 in image.shape:
        raise ImageError(f"An image array must be (H, W) or (H, W, 1|3|4) with H, W > 0, not {image.shape}.")
    if image.dtype.kind not in "uifb":
        raise ImageError(f"An image array must hold numbers, not {image.dtype}.")
    limits.check_pixels(image.shape[1], image.shape[0], "The image array")
    if image.dtype != np.uint8:
        if image.dtype.kind == "f":
            if not np.isfinite(image).all():
                raise ImageError("The image array holds NaN or infinite values; pass finite pixel values.")
            if image.max() <= 1.0:
                image = image * 255
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def check_encoded(data: bytes, limits: Limits | None = None, label: str = "The image", remedy: Remedy = CLI) -> int:
    """Refuse encoded bytes whose header claims more than the pixel limit, without decoding (the server calls it
    before queueing, `remedy` wording its advice); returns the EXIF orientation (1 = upright)."""
    return _check_header(bytes(data), label, limits or Limits(), remedy)


def _check_header(data: bytes, label: str, limits: Limits, remedy: Remedy = CLI) -> int:
    """The EXIF orientation (1 = upright) of encoded bytes, after refusing a header over the pixel limit.

    Read by Pillow without decoding pixels; formats Pillow does not know are left to opencv (orientation 1).
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return 1
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            orientation = image.getexif().get(0x0112, 1) if image.format in ("JPEG", "MPO", "TIFF", "WEBP") else 1
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(claimed.group(1)) / 1e6:.0f} megapixels" if claimed else "a huge size"
        raise PixelLimitError(f"{label} claims {pixels}, over the limit of {limits.max_pixels / 1e6:g} megapixels; "
                              f"scale it down or raise {remedy.flag('max-pixels')}.") from None
    except Exception:  # not a format Pillow reads, or a broken header: opencv decides
        return 1
    limits.check_pixels(width, height, label, remedy)
    return orientation if orientation in ORIENTATIONS else 1


# EXIF orientation -> how to turn the stored pixels upright (numpy views)
ORIENTATIONS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """The image turned upright for an EXIF orientation tag (1..8)."""
    return ORIENTATIONS.get(orientation, ORIENTATIONS[1])(image)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """RGB for 3-channel models (gray and RGBA converted), gray for 1-channel models."""
    if image.ndim == 2:
        image = image[:, :, None]
    have = image.shape[2]
    if channels == 3:
        if have == 1:
            return np.repeat(image, 3, axis=2)
        if have == 4:
            return image[:, :, :3]
        if have == 3:
            return image
    if channels == 1:
        if have == 1:
            return image
        if have in (3, 4):
            return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)[:, :, None]
    raise ImageError(f"The model takes {channels}-channel images and this image has {have} channels; "
                     "pass a gray or colour image the model can take.")


def _geometry(original_hw: tuple[int, int], size: tuple[int, int], pre: Preprocess) -> np.ndarray:
    """2x3 affine matrix from original pixels to model-input pixels for the preset's resize mode."""
    oh, ow = original_hw
    h, w = size
    if pre.resize == "stretch":
        sx, sy, tx, ty = w / ow, h / oh, 0.0, 0.0
    elif pre.resize == "letterbox":
        s = min(w / ow, h / oh)
        sx = sy = s
        tx, ty = (w - ow * s) / 2, (h - oh * s) / 2
    elif pre.resize == "crop":
        s = max(h / oh, w / ow) * pre.resize_shorter  # the crop covers the model's aspect ratio
        rh, rw = round(oh * s), round(ow * s)
        sx, sy = rw / ow, rh / oh
        tx, ty = -float((rw - w) // 2), -float((rh - h) // 2)
    else:
        raise ImageError(f"Unknown resize mode '{pre.resize}'; use stretch, crop or letterbox.")
    return np.array([[sx, 0, tx], [0, sy, ty]], dtype=np.float64)


@dataclass
class Prepared:
    """A batch ready for the model, with what is needed to map results back to each original."""
    x: np.ndarray                     # float32, model layout
    originals: list[np.ndarray]       # RGB uint8 images as decoded
    pixel_maps: list[PixelMap]
    names: list[str]
    spec: InputSpec
    preprocess: Preprocess
    cache: dict = field(default_factory=dict)  # forward outputs computed once per batch

    def __len__(self) -> int:
        return len(self.x)

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self.x.shape[2:4]) if self.spec.layout == "NCHW" else tuple(self.x.shape[1:3])

    def select(self, index: Sequence[int]) -> "Prepared":
        """The images at `index` (repeats allowed) with their cached outputs."""
        return select(self, index)

    def spatial_mask(self, masks: np.ndarray) -> np.ndarray:
        """Masks (M, H, W) shaped to broadcast against inputs of this layout."""
        return masks[:, None] if self.spec.layout == "NCHW" else masks[..., None]


def prepare(sources: Sequence[ImageSource], spec: InputSpec, pre: Preprocess,
            limits: Limits | None = None, files: Sequence[str | None] | None = None) -> Prepared:
    """Decode, convert channels, resize and normalise images into one batch in the model's layout.

    Originals longer than `limits.max_output_side` are scaled down first, so heatmaps and overlays at the
    original's size stay bounded (boxes in original pixels are scaled alike by the PixelMap). `files` names
    the file each encoded source was read from (see `decode`).
    """
    limits = limits or Limits()
    if not len(sources):
        raise ImageError("No images were given; pass at least one image (a path, encoded bytes or an array).")
    size = spec.size or pre.size or (224, 224)
    files = list(files) if files is not None else [None] * len(sources)
    originals, maps, tensors, names = [], [], [], []
    for i, (source, file) in enumerate(zip(sources, files)):
        image, scale = bounded(to_channels(decode(source, limits, file), spec.channels), limits.max_output_side)
        if image.shape[2] == 3 and image.ndim == 3 and spec.channels == 3:
            rgb = image
        else:
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
        matrix = _geometry(image.shape[:2], size, pre)
        pixels = cv2.warpAffine(image, matrix, (size[1], size[0]), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(114, 114, 114))
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        tensors.append(normalise(pixels, pre))
        originals.append(np.ascontiguousarray(rgb))
        maps.append(PixelMap(matrix, image.shape[:2], size, scale))
        names.append(str(source) if isinstance(source, (str, os.PathLike)) else str(file or f"image{i}"))
    x = np.stack(tensors).astype(np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return Prepared(np.ascontiguousarray(x), originals, maps, names, spec, pre)


def bounded(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The image scaled down (area-averaged) so its longer side is at most `side`, and the scale used."""
    longest = max(image.shape[:2])
    if longest <= side:
        return image, 1.0
    scale = side / longest
    h, w = (max(1, round(d * scale)) for d in image.shape[:2])
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return (small[:, :, None] if small.ndim == 2 and image.ndim == 3 else small), scale


def normalise(pixels: np.ndarray, pre: Preprocess) -> np.ndarray:
    """HWC uint8 in RGB order -> HWC float32 in the model's colour order and value range."""
    x = pixels.astype(np.float32)
    if pre.order == "BGR" and x.shape[2] == 3:
        x = x[:, :, ::-1]
    channels = x.shape[2]
    mean = np.asarray(pre.mean[:channels] if channels > 1 else [np.mean(pre.mean)], np.float32)
    std = np.asarray(pre.std[:channels] if channels > 1 else [np.mean(pre.std)], np.float32)
    return (x * pre.scale - mean) / std


def denormalise(x: np.ndarray, pre: Preprocess, layout: str = "NCHW") -> np.ndarray:
    """Model input (one image, model layout) -> RGB uint8 HWC, the inverse of `normalise`."""
    hwc = x.transpose(1, 2, 0) if layout == "NCHW" else x
    channels = hwc.shape[2]
    mean = np.asarray(pre.mean[:channels] if channels > 1 else [np.mean(pre.mean)], np.float32)
    std = np.asarray(pre.std[:channels] if channels > 1 else [np.mean(pre.std)], np.float32)
    pixels = (hwc * std + mean) / pre.scale
    if pre.order == "BGR" and channels == 3:
        pixels = pixels[:, :, ::-1]
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.clip(pixels, 0, 255).round().astype(np.uint8)


def value_range(pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) of valid model inputs, where pixels 0 and 255 land (mean/std are in model order)."""
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    return (0 * pre.scale - mean) / std, (255 * pre.scale - mean) / std


def select(batch: Prepared, index: Sequence[int]) -> Prepared:
    """The batch's images at `index` (repeats allowed), with cached forward outputs sliced alike."""
    index = list(index)
    return Prepared(batch.x[index], [batch.originals[i] for i in index], [batch.pixel_maps[i] for i in index],
                    [batch.names[i] for i in index], batch.spec, batch.preprocess,
                    {k: v[index] for k, v in batch.cache.items()})
