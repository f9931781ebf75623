"""Shared by the feature jobs: image folders read in chunks, layer values as (N, C, h, w), tiles.

Folders are decoded and prepared one runtime batch at a time, so a job over a big
folder never holds more than one batch of images in memory.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import cv2
import numpy as np

from ..errors import ImageError, UserError
from ..images import ImageSource, decode
from ..methods.layout import channels_first_np as channels_first
from ..progress import progress

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..images import Prepared
    from ..model import TensorInfo

SCHEMA_VERSION = 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
MEMORY_BUDGET = 256 * 2 ** 20  # bytes of exposed layer values per chunk when many layers are exposed


class FeatureError(UserError):
    """A feature job was asked for something the model or the data cannot give."""


def list_images(sources: str | os.PathLike | ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    """Image files from folders (recursive, sorted) and files, or arrays passed through, in order."""
    if isinstance(sources, (str, os.PathLike, bytes)) or (isinstance(sources, np.ndarray) and sources.ndim == 3):
        sources = [sources]
    found: list[ImageSource] = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)):
            found.append(source)
            continue
        path = Path(source)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise ImageError(f"'{path}' is neither an image file nor a folder; check the path.")
    if not found:
        raise ImageError("No images were found (looked for PNG, JPEG, BMP, TIFF, WebP files); "
                         "pass a folder of images.")
    return found


def image_name(source: ImageSource, index: int) -> str:
    """A file's path as given, or `image<index>` for arrays and bytes."""
    return str(source) if isinstance(source, (str, os.PathLike)) else f"image{index}"


def chunks(explainer: "Explainer", sources: Sequence[ImageSource], desc: str,
           size: int | None = None) -> Iterator[tuple[int, "Prepared"]]:
    """(offset, prepared batch) for consecutive chunks of the images, decoded only when reached."""
    step = max(1, size or explainer.runtime.batch_size)
    starts = range(0, len(sources), step)
    for start in progress(starts, desc=desc, quiet=explainer.quiet or len(starts) < 2, unit="batch"):
        yield start, explainer.prepare(list(sources[start:start + step]))


def chunk_size(explainer: "Explainer", layers: Sequence["TensorInfo"]) -> int:
    """Images per chunk so that the exposed values of `layers` stay within MEMORY_BUDGET."""
    per_image = sum(4 * math.prod(d for d in (info.shape or ())[1:] if isinstance(d, int)) for info in layers)
    return max(1, min(explainer.runtime.batch_size, MEMORY_BUDGET // max(1, per_image)))


def as_maps(value: np.ndarray, info: "TensorInfo") -> np.ndarray:
    """A layer's value as (N, C, h, w): spatial layouts via channels_first, 1x1 maps as they are."""
    if info.spatial:
        return channels_first(value, info)
    if value.ndim == 4:
        return value
    raise FeatureError(f"Tensor '{info.name}' (shape {list(value.shape)}) is not a spatial map; "
                       "pick one from `onnxplain inspect --spatial`.")


def pooled(value: np.ndarray, info: "TensorInfo") -> np.ndarray:
    """One vector per image: spatial maps global-average pooled, anything else flattened."""
    if info.spatial:
        return channels_first(value, info).mean(axis=(2, 3))
    return value.reshape(len(value), -1)


def check_channel(info: "TensorInfo", channels: int, channel: int) -> None:
    if not 0 <= channel < channels:
        raise FeatureError(f"Channel {channel} is out of range for layer '{info.name}', which has {channels} "
                           f"channels (0 to {channels - 1}).")


def thumbnail(image: np.ndarray | None, size: int, fill: int = 255, crop: bool = False) -> np.ndarray:
    """An RGB uint8 image padded (or centre-cropped) to a square and resized to size x size (gray when missing)."""
    if image is None:
        return np.full((size, size, 3), 200, np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    h, w = image.shape[:2]
    if crop:
        side = min(h, w)
        image = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        h = w = side
    side = max(h, w, 1)
    canvas = np.full((side, side, 3), fill, np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top:top + h, left:left + w] = image
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_NEAREST
    return cv2.resize(canvas, (size, size), interpolation=interpolation)


def load_thumbnail(name: str, size: int, crop: bool = False) -> np.ndarray:
    """A thumbnail of the image file `name`, or a gray tile when it cannot be read."""
    try:
        return thumbnail(_rgb(decode(name)), size, crop=crop)
    except (ImageError, OSError):
        return thumbnail(None, size)


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        return np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2)
    return image[:, :, :3]
