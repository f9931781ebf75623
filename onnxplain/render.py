"""Rendering only: colormaps, overlays, grids and PNG writing. Nothing else writes images."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
             "bwr": cv2.COLORMAP_COOL, "gray": None}


def normalise(heatmap: np.ndarray, signed: bool = False) -> np.ndarray:
    """Scale a map to [0, 1] (min-max), or to [-1, 1] by max |value| when signed; flat maps become 0."""
    heatmap = np.nan_to_num(heatmap.astype(np.float32))
    if signed:
        peak = float(np.abs(heatmap).max())
        return heatmap / peak if peak > 0 else np.zeros_like(heatmap)
    low, high = float(heatmap.min()), float(heatmap.max())
    return (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map as an RGB uint8 image."""
    gray = np.uint8(np.clip(heatmap, 0, 1) * 255)
    if COLORMAPS.get(colormap) is None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    return cv2.cvtColor(cv2.applyColorMap(gray, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
    """The heatmap (any range, resized to the image) blended over an RGB uint8 image."""
    if heatmap.shape[:2] != image.shape[:2]:
        heatmap = cv2.resize(heatmap.astype(np.float32), (image.shape[1], image.shape[0]))
    color = colorize(normalise(heatmap), colormap)
    blended = (1 - alpha) * image[:, :, :3].astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(blended, 0, 255).astype(np.uint8)


def grid(tiles: Sequence[np.ndarray], columns: int | None = None, pad: int = 2,
         labels: Sequence[str] | None = None, tile_size: int | None = None) -> np.ndarray:
    """RGB tiles (uint8, any size) in a grid with optional labels under each."""
    if not tiles:
        return np.zeros((1, 1, 3), np.uint8)
    size = tile_size or max(max(t.shape[:2]) for t in tiles)
    columns = columns or int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    label_h = 14 if labels else 0
    cell_h, cell_w = size + label_h + pad, size + pad
    canvas = np.full((rows * cell_h + pad, columns * cell_w + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        tile = tile if tile.ndim == 3 else np.repeat(tile[:, :, None], 3, axis=2)
        tile = cv2.resize(tile, (size, size), interpolation=cv2.INTER_NEAREST)
        r, c = divmod(i, columns)
        y, x = pad + r * cell_h, pad + c * cell_w
        canvas[y:y + size, x:x + size] = tile[:, :, :3]
        if labels:
            cv2.putText(canvas, str(labels[i])[: max(4, size // 7)], (x, y + size + 11),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 image as PNG (whole or not at all); returns the path."""
    from .writing import write_bytes
    return write_bytes(path, encode_png(image))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (for HTML reports and HTTP answers)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".png", bgr)
    return data.tobytes()


def save_attribution(attribution, prefix: str | Path, alpha: float = 0.5, colormap: str = "jet") -> dict:
    """Overlay PNG, heatmap .npy (original size) and raw .npy (method resolution) for one Attribution."""
    from .writing import save_npy
    prefix = str(prefix)
    files = {"overlay": str(write_png(prefix + ".png", attribution.overlay(alpha, colormap))),
             "heatmap": prefix + ".npy", "raw": prefix + ".raw.npy"}
    save_npy(files["heatmap"], attribution.heatmap.astype(np.float32))
    save_npy(files["raw"], attribution.raw.astype(np.float32))
    for key, value in attribution.extras.items():
        if isinstance(value, np.ndarray) and value.ndim == 2:
            files[key] = str(write_png(f"{prefix}.{key}.png", colorize(normalise(value))))
    return files
