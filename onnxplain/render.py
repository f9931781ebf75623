"""Rendering only: colormaps, overlays, grids and PNG writing. Nothing else writes images."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .errors import RenderError

COLORMAPS = {"jet": cv2.COLORMAP_JET, "turbo": cv2.COLORMAP_TURBO, "viridis": cv2.COLORMAP_VIRIDIS,
             "inferno": cv2.COLORMAP_INFERNO, "magma": cv2.COLORMAP_MAGMA, "hot": cv2.COLORMAP_HOT,
             "bwr": "bwr", "gray": None}
DIVERGING = "bwr"   # zero-centred: blue (negative), white (0), red (positive)
# pixel-level gradient maps, drawn as their papers show them: 99th-percentile clipped grayscale
PIXEL_METHODS = {"saliency", "smoothgrad", "guided-backprop", "deconvnet", "guided-grad-cam", "integrated-gradients",
                 "smoothgrad-fd"}


def check_colormap(name: str) -> str:
    """`name` when it is a known colormap, else a RenderError naming them."""
    if name not in COLORMAPS:
        raise RenderError(f"Unknown colormap '{name}'; use one of {', '.join(COLORMAPS)}.")
    return name


def _bwr_lut() -> np.ndarray:
    """256 RGB colours from blue through white to red."""
    t = np.linspace(-1, 1, 256)[:, None]
    blue, white, red = np.array([[59, 76, 192]]), np.array([[255, 255, 255]]), np.array([[180, 4, 38]])
    return np.where(t < 0, white + (blue - white) * -t, white + (red - white) * t).astype(np.uint8)


def normalise(heatmap: np.ndarray, signed: bool = False, valid: np.ndarray | None = None) -> np.ndarray:
    """Scale a map to [0, 1] (min-max), or to [-1, 1] by max |value| when signed; flat maps become 0.
    With `valid`, the scale comes from the valid pixels only."""
    heatmap = np.nan_to_num(heatmap.astype(np.float32))
    seen = heatmap[valid] if valid is not None and valid.any() else heatmap
    if signed:
        peak = float(np.abs(seen).max())
        return heatmap / peak if peak > 0 else np.zeros_like(heatmap)
    low, high = float(seen.min()), float(seen.max())
    return (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap)


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A [0, 1] map as an RGB uint8 image."""
    gray = np.uint8(np.clip(heatmap, 0, 1) * 255)
    code = COLORMAPS[check_colormap(colormap)]
    if code is None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    if code == "bwr":
        return _bwr_lut()[gray]
    return cv2.cvtColor(cv2.applyColorMap(gray, code), cv2.COLOR_BGR2RGB)


def colorize_signed(heatmap: np.ndarray, colormap: str = DIVERGING, valid: np.ndarray | None = None) -> np.ndarray:
    """A signed map with 0 at the colormap's centre (white for bwr), scaled by max |value|."""
    return colorize((normalise(heatmap, signed=True, valid=valid) + 1) / 2, colormap)


def is_signed(heatmap: np.ndarray, valid: np.ndarray | None = None) -> bool:
    seen = heatmap[valid] if valid is not None and valid.any() else heatmap
    return bool(seen.min() < 0 < seen.max())


def unseen_grey(image: np.ndarray, picture: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """`picture` where the model saw the image, the photo in dim grey elsewhere (nothing drawn there)."""
    if valid is None or valid.all():
        return picture
    grey = cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)[:, :, None] // 2
    return np.where(valid[:, :, None], picture, np.repeat(grey, 3, axis=2)).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str | None = None,
            valid: np.ndarray | None = None) -> np.ndarray:
    """The heatmap (any range, resized to the image) blended over an RGB uint8 image; signed maps get a
    zero-centred diverging map (unless `colormap` is given); pixels outside `valid` stay dim grey."""
    if heatmap.shape[:2] != image.shape[:2]:
        heatmap = cv2.resize(heatmap.astype(np.float32), (image.shape[1], image.shape[0]))
    if is_signed(heatmap, valid):
        color = colorize_signed(heatmap, colormap or DIVERGING, valid)
    else:
        color = colorize(normalise(heatmap, valid=valid), colormap or "jet")
    blended = (1 - alpha) * image[:, :, :3].astype(np.float32) + alpha * color.astype(np.float32)
    return unseen_grey(image, np.clip(blended, 0, 255).astype(np.uint8), valid)


def gradient_picture(heatmap: np.ndarray, valid: np.ndarray | None = None, colormap: str = "gray") -> np.ndarray:
    """A pixel-level gradient map as Simonyan et al. / Smilkov et al. show it: |map| clipped at its 99th
    percentile, grayscale (or a sequential colormap); signed maps zero-centred on a diverging map."""
    heatmap = np.nan_to_num(heatmap.astype(np.float32))
    seen = heatmap[valid] if valid is not None and valid.any() else heatmap
    if is_signed(heatmap, valid):
        clip = float(np.percentile(np.abs(seen), 99)) or 1.0
        picture = colorize((np.clip(heatmap / clip, -1, 1) + 1) / 2, DIVERGING)
    else:
        clip = float(np.percentile(np.abs(seen), 99)) or 1.0
        picture = colorize(np.clip(np.abs(heatmap) / clip, 0, 1), colormap)
    return picture if valid is None else np.where(valid[:, :, None], picture, 0).astype(np.uint8)


def colour_gradient(gradient: np.ndarray) -> np.ndarray:
    """A (C, H, W) or (H, W, C) input gradient as a colour image, as guided backprop and deconvnet are shown:
    standardised, 0.1 std per unit around mid-grey, clipped (pytorch-grad-cam's deprocess_image)."""
    g = np.asarray(gradient, np.float32)
    if g.ndim == 3 and g.shape[0] in (1, 3) and g.shape[-1] not in (1, 3):
        g = g.transpose(1, 2, 0)
    g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
    g = np.uint8(np.clip(g, 0, 1) * 255)
    return np.repeat(g, 3, axis=2) if g.shape[2] == 1 else g[:, :, :3]


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
            text, scale = fitted_label(str(labels[i]), size)
            cv2.putText(canvas, text, (x, y + size + 11), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


# categorical colours for class maps (Tableau 10, then lighter variants), RGB
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
                    [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
                    [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229]], np.uint8)
LEGEND_ROW = 16  # pixels per legend line


def _on_seen_box(panel: np.ndarray, image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """An RGB panel (a grid over what the model saw) stretched onto the image's size: into the bounding box
    of `valid`, the photo in dim grey around it."""
    h, w = image.shape[:2]
    if valid is None or valid.all() or not valid.any():
        return cv2.resize(panel, (w, h), interpolation=cv2.INTER_NEAREST)
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    canvas = np.zeros((h, w, 3), np.uint8)
    canvas[top:bottom, left:right] = cv2.resize(panel, (right - left, bottom - top), interpolation=cv2.INTER_NEAREST)
    return unseen_grey(image, canvas, valid)


def _legend(width: int, entries: Sequence[tuple[np.ndarray, str]]) -> np.ndarray:
    """A white strip with one line per entry: a colour swatch and its text."""
    strip = np.full((LEGEND_ROW * len(entries) + 4, width, 3), 255, np.uint8)
    for i, (colour, text) in enumerate(entries):
        y = 2 + i * LEGEND_ROW
        strip[y + 2:y + LEGEND_ROW - 2, 4:4 + LEGEND_ROW - 4] = colour
        cv2.putText(strip, text[: max(8, (width - LEGEND_ROW - 8) // 7)], (LEGEND_ROW + 4, y + LEGEND_ROW - 4),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return strip


def class_map_picture(classes: np.ndarray, legend: dict, image: np.ndarray, valid: np.ndarray | None = None,
                      alpha: float = 0.6) -> np.ndarray:
    """Occlusion's class map (most probable class per window position) at the image's size, blended over the
    photo, with a legend below: one colour per class (in `legend` order), labelled 'index name'."""
    order = list(legend)
    index = np.searchsorted(np.array(sorted(order)), classes)
    colours = PALETTE[[order.index(c) % len(PALETTE) for c in sorted(order)]]
    panel = _on_seen_box(colours[index], image, valid)
    blended = ((1 - alpha) * image[:, :, :3] + alpha * panel).astype(np.uint8)
    picture = unseen_grey(image, blended, valid)
    entries = [(PALETTE[i % len(PALETTE)], f"{c} {legend[c]}") for i, c in enumerate(order)]
    return np.concatenate([picture, _legend(picture.shape[1], entries)])


def panel_picture(values: np.ndarray, image: np.ndarray, valid: np.ndarray | None = None,
                  colormap: str = "viridis") -> np.ndarray:
    """A per-window-position panel (score drops, activations) at the image's size, with a colour bar below
    labelled with the panel's minimum and maximum."""
    values = np.nan_to_num(values.astype(np.float32))
    panel = _on_seen_box(colorize(normalise(values), colormap), image, valid)
    return np.concatenate([panel, colour_bar(panel.shape[1], float(values.min()), float(values.max()), colormap)])


def colour_bar(width: int, low: float, high: float, colormap: str = "viridis") -> np.ndarray:
    """A 28-pixel white strip: the colormap from `low` (left) to `high` (right), both values printed."""
    bar = np.full((28, width, 3), 255, np.uint8)
    bar[2:12, 4:max(5, width - 4)] = colorize(np.linspace(0, 1, max(1, width - 8))[None].repeat(10, 0), colormap)
    for text, x in ((f"{low:.3g}", 4), (f"{high:.3g}", None)):
        size = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]
        cv2.putText(bar, text, (x if x is not None else width - 4 - size, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return bar


def fitted_label(text: str, width: int) -> tuple[str, float]:
    """(text, font scale) that fits `width` pixels: the font shrinks down to 0.3, then the text is cut."""
    scale = 0.4
    while scale > 0.3 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
        scale = round(scale - 0.05, 2)
    while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
        text = text[:-1]
    return text, scale


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 image as PNG (whole or not at all); returns the path."""
    from .writing import write_bytes
    return write_bytes(path, encode_png(image))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image (for HTML reports and HTTP answers)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, data = cv2.imencode(".png", bgr)
    return data.tobytes()


def save_attribution(attribution, prefix: str | Path, alpha: float = 0.5, colormap: str | None = None) -> dict:
    """Overlay PNG, heatmap .npy (original size, 0 where the model saw nothing), the validity mask .npy beside
    it, raw .npy (method resolution); pixel-level gradient maps also as `.gradient.png` (99th-percentile
    grayscale) and, where the colour gradient is kept, `.color.png`."""
    if colormap is not None:
        check_colormap(colormap)
    from .writing import save_npy
    prefix = str(prefix)
    files = {"overlay": str(write_png(prefix + ".png", attribution.overlay(alpha, colormap))),
             "heatmap": prefix + ".npy", "raw": prefix + ".raw.npy"}
    save_npy(files["heatmap"], attribution.heatmap.astype(np.float32))
    save_npy(files["raw"], attribution.raw.astype(np.float32))
    valid = getattr(attribution, "valid", None)
    if valid is not None:
        files["valid"] = prefix + ".valid.npy"
        save_npy(files["valid"], valid)
    if attribution.method in PIXEL_METHODS:
        files["gradient"] = str(write_png(prefix + ".gradient.png", gradient_picture(attribution.heatmap, valid)))
    extras = attribution.extras
    for key, value in extras.items():
        if key == "class_map" and isinstance(extras.get("class_legend"), dict):
            picture = class_map_picture(value, extras["class_legend"], attribution.image, valid)
            files[key] = str(write_png(f"{prefix}.{key}.png", picture))
        elif isinstance(value, np.ndarray) and value.ndim == 2:
            picture = panel_picture(value, attribution.image, valid)
            files[key] = str(write_png(f"{prefix}.{key}.png", picture))
        elif key == "gradient" and isinstance(value, np.ndarray) and value.ndim == 3:
            files["color"] = str(write_png(prefix + ".color.png", colour_gradient(value)))
    return files
