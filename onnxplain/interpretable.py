"""Interpretable CNNs (Zhang, Wu & Zhu, CVPR 2018): template masks, the filter loss, and part-localisation stability.

Torch side: `templates` builds the paper's position templates, `template_mask` (and the module
`InterpretableMask`) keeps only the neighbourhood of each channel's peak, `filter_loss` is minus the
mutual information between a layer's maps and the templates, and `FaceNet` / `train` / `export` are the
small face-vs-non-face recipe that `models/train_interpretable.py` runs. ONNX side (onnxruntime, no
torch): `peaks` finds every filter's peak position over a set of images and measures how much it moves
(`spread`), and `peaks_command` is `onnxplain features peaks`.

Importing this module does not import torch (the CLI loads it to list its command): torch is imported
inside the functions, and the nn.Module classes are built on first access (module `__getattr__`).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click
import numpy as np

from .clikit import Command

if TYPE_CHECKING:
    import torch

    from .explainer import Explainer
    from .images import ImageSource

BETA = 4.0  # template falloff, as in the paper
SCHEMA_VERSION = 1


# ---- templates and the mask (torch) -----------------------------------------------------------
def template_tau(h: int, w: int) -> float:
    """The paper's tau = 0.5 / n^2 for an n x n map (0.5 / (h w) for an h x w one)."""
    return 0.5 / (h * w)


def templates(h: int, w: int | None = None, beta: float = BETA, tau: float | None = None) -> "torch.Tensor":
    """The h*w positive templates, (h*w, h, w) with template k peaking at (k // w, k % w).

    T_mu(i, j) = tau * max(1 - beta * ||(i, j) - mu||_1 / n, -1), n the map side (sqrt(h w) when not square).
    """
    import torch
    w = h if w is None else w
    tau = template_tau(h, w) if tau is None else tau
    rows = torch.arange(h, dtype=torch.float32)
    cols = torch.arange(w, dtype=torch.float32)
    mu_r, mu_c = rows.repeat_interleave(w), cols.repeat(h)  # template k peaks at (k // w, k % w)
    dist = (rows[None, :, None] - mu_r[:, None, None]).abs() + (cols[None, None, :] - mu_c[:, None, None]).abs()
    return tau * torch.clamp(1 - beta * dist / math.sqrt(h * w), min=-1.0)


def negative_template(h: int, w: int | None = None, tau: float | None = None) -> "torch.Tensor":
    """T^- = -tau everywhere: the template for images of other categories, (h, w)."""
    import torch
    w = h if w is None else w
    return torch.full((h, w), -(template_tau(h, w) if tau is None else tau))


def template_mask(x: "torch.Tensor", beta: float = BETA, tau: float | None = None) -> "torch.Tensor":
    """ReLU(x * T_mu) with mu each (image, channel) map's peak: the interpretable layer's forward pass.

    Exports with the legacy exporter as ArgMax + float arithmetic on coordinate grids. The template
    depends on x only through the argmax, so gradients flow through x alone, as in the paper.
    """
    import torch
    _, _, h, w = x.shape
    tau = template_tau(h, w) if tau is None else tau
    index = x.flatten(2).argmax(dim=2).to(x.dtype)[:, :, None, None]      # (N, C, 1, 1), first maximum
    row = torch.floor(index / w)
    col = index - row * w
    rows = torch.arange(h, dtype=x.dtype, device=x.device)[:, None]
    cols = torch.arange(w, dtype=x.dtype, device=x.device)[None, :]
    dist = (rows - row).abs() + (cols - col).abs()
    return torch.relu(x * (tau * torch.clamp(1 - beta * dist / (h * w) ** 0.5, min=-1.0)))


def filter_loss(x: "torch.Tensor", alpha: float | None = None, beta: float = BETA,
                tau: float | None = None) -> "torch.Tensor":
    """Loss_f = -MI(X; T) for the maps x (N, C, h, w) of one batch, averaged over channels.

    MI = sum_T p(T) sum_x p(x|T) log(p(x|T) / p(x)) over T in {T^-, T_mu}, with p(x|T) = exp(tr(x T)) / Z_T
    normalised over the batch, p(x) = sum_T p(T) p(x|T), and the prior p(T^-) = 1 - alpha,
    p(T_mu) = alpha / n^2; alpha defaults to n^2 / (1 + n^2) (every template equally likely).
    """
    import torch
    _, _, h, w = x.shape
    tau = template_tau(h, w) if tau is None else tau
    bank = torch.cat([negative_template(h, w, tau)[None], templates(h, w, beta, tau)]).to(x)   # (1 + hw, h, w)
    alpha = h * w / (1.0 + h * w) if alpha is None else alpha
    prior = torch.full((1 + h * w,), alpha / (h * w), dtype=x.dtype, device=x.device)
    prior[0] = 1 - alpha
    score = torch.einsum("bcij,tij->cbt", x, bank)                     # tr(x . T): (C, N, T)
    log_p_x_t = score - torch.logsumexp(score, dim=1, keepdim=True)      # log p(x|T), normalised over the batch
    log_p_x = torch.logsumexp(log_p_x_t + prior.log(), dim=2, keepdim=True)
    mi = (prior * (log_p_x_t.exp() * (log_p_x_t - log_p_x)).sum(dim=1)).sum(dim=1)   # (C,)
    return -mi.mean()


def _build_torch_modules() -> dict[str, type]:
    """Define the nn.Module classes (torch is imported here, not when this module loads)."""
    from torch import nn

    class InterpretableMask(nn.Module):
        """The interpretable layer: each channel's map times the template of its peak, positive part kept."""

        def __init__(self, beta: float = BETA, tau: float | None = None):
            super().__init__()
            self.beta, self.tau = beta, tau

        def forward(self, x):
            return template_mask(x, self.beta, self.tau)

    class FaceNet(nn.Module):
        """Face vs non-face on 1x25x25 gray images in [0, 1]: three 3x3 convs, GAP, linear (2 classes).

        conv1 (16) relu, maxpool 2 -> conv2 (32) relu -> conv3 (`channels`) relu -> [InterpretableMask] -> GAP
        -> linear. `padding` 0 (every map position sees only image pixels) gives a 7x7 top map, 1 a 12x12 one.
        With `masked`, GAP sees ReLU(x T) / tau, so the linear layer reads the masked maps on the scale of the
        unmasked ones (the template peaks at tau = 0.5 / n^2).
        """

        def __init__(self, masked: bool = True, channels: int = 32, padding: int = 0, seed: int = 0):
            super().__init__()
            import torch
            torch.manual_seed(seed)
            self.masked = masked
            self.conv1 = nn.Conv2d(1, 16, 3, padding=padding)
            self.relu1 = nn.ReLU()
            self.pool1 = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=padding)
            self.relu2 = nn.ReLU()
            self.conv3 = nn.Conv2d(32, channels, 3, padding=padding)
            self.relu3 = nn.ReLU()
            self.mask = InterpretableMask() if masked else nn.Identity()
            self.fc = nn.Linear(channels, 2)

        def top(self, x):
            """The top conv layer's maps after ReLU (where the filter loss applies)."""
            x = self.pool1(self.relu1(self.conv1(x)))
            return self.relu3(self.conv3(self.relu2(self.conv2(x))))

        def scores_and_top(self, x):
            top = self.top(x)
            pooled = self.mask(top).mean(dim=(2, 3))
            if self.masked:
                pooled = pooled / template_tau(*top.shape[2:])
            return self.fc(pooled), top

        def forward(self, x):
            return self.scores_and_top(x)[0]

    for cls in (InterpretableMask, FaceNet):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__   # picklable as onnxplain.interpretable.X
    return {"InterpretableMask": InterpretableMask, "FaceNet": FaceNet}


_torch_modules = functools.cache(_build_torch_modules)


def __getattr__(name: str) -> Any:
    if name in ("InterpretableMask", "FaceNet"):
        return _torch_modules()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- the face data and the recipe (torch) -----------------------------------------------------------
def lfw_faces() -> tuple[np.ndarray, np.ndarray]:
    """skimage's bundled `lfw_subset`: (200, 25, 25) uint8 images and labels (1 = face, the first 100).

    The float images are rounded to uint8, so training sees exactly what a PNG of them gives back.
    """
    from skimage import data
    images = data.lfw_subset()
    if images.shape != (200, 25, 25):
        raise RuntimeError(f"skimage's lfw_subset has shape {images.shape}, not the (200, 25, 25) this recipe knows.")
    return np.round(images * 255).astype(np.uint8), np.r_[np.ones(100), np.zeros(100)].astype(np.int64)


def split(labels: np.ndarray, test_size: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices, stratified by label."""
    from sklearn.model_selection import train_test_split
    return tuple(np.sort(part) for part in train_test_split(np.arange(len(labels)), test_size=test_size,
                                                             stratify=labels, random_state=seed))


def augment(x: "torch.Tensor", generator: "torch.Generator", shift: int = 2) -> "torch.Tensor":
    """Random horizontal flips and shifts of up to `shift` pixels (edges replicated) of a batch (N, 1, H, W)."""
    import torch
    import torch.nn.functional as F
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (shift,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train(net: "torch.nn.Module", images: np.ndarray, labels: np.ndarray, epochs: int = 60, lam: float = 0.0,
          alpha: float | None = None, lr: float = 3e-3, batch_size: int = 32, weight_decay: float = 1e-4,
          seed: int = 0, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Adam (cosine schedule) on cross-entropy + lam * filter_loss (top conv), with flips and shifts; per-epoch logs.

    `images` are uint8 (N, H, W); the batches' order and augmentation depend only on `seed`.
    """
    import torch
    import torch.nn.functional as F
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(images).float()[:, None] / 255
    y_all = torch.from_numpy(labels).long()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, epochs)
    history = []
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_all), generator=generator)
        totals = {"task": 0.0, "filter": 0.0, "correct": 0}
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            scores, top = net.scores_and_top(augment(x_all[index], generator))
            task = F.cross_entropy(scores, y_all[index])
            floss = filter_loss(top, alpha)
            loss = task + lam * floss if lam else task
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            totals["task"] += task.item() * len(index)
            totals["filter"] += floss.item() * len(index)
            totals["correct"] += int((scores.argmax(1) == y_all[index]).sum())
        schedule.step()
        log = {"epoch": epoch + 1, "task_loss": totals["task"] / len(order),
               "filter_loss": totals["filter"] / len(order), "train_accuracy": totals["correct"] / len(order)}
        history.append(log)
        if on_epoch:
            on_epoch(log)
    net.eval()
    return history


def accuracy(net: "torch.nn.Module", images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 images (N, H, W) the torch net classifies right."""
    import torch
    with torch.no_grad():
        scores = net.eval()(torch.from_numpy(images).float()[:, None] / 255)
    return float((scores.argmax(1).numpy() == labels).mean())


def export(net: "torch.nn.Module", path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Legacy export (opset 17, dynamic batch, input `input` 1x25x25 in [0, 1], output `scores`) + metadata."""
    import onnx
    import torch
    path = Path(path)
    net.eval()
    torch.onnx.export(net, torch.zeros(1, 1, 25, 25), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["scores"],
                      dynamic_axes={"input": {0: "batch"}, "scores": {0: "batch"}})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"onnxplain.preset": "raw01", **(metadata or {})})
    onnx.save(model, str(path))
    return path


# ---- peak positions over images (onnxruntime) -----------------------------------------------------
@dataclass
class Peaks:
    """Each filter's peak position in each image at one layer, and how far the peaks wander.

    A filter *fires* when its mean peak value over the images is at least `threshold` times the
    largest mean peak of the layer. Its *spread* is the mean distance of its peak positions (over the
    images where it is positive) from their mean, divided by the map side (sqrt(h w)); the layer's
    `mean_spread` averages the spreads of the firing filters.
    """
    layer: str
    names: list[str]
    hw: tuple[int, int]
    positions: np.ndarray   # (N, C, 2) int: (row, col) of each map's first maximum
    values: np.ndarray      # (N, C) float: the maxima
    threshold: float = 0.1
    spread: np.ndarray = field(init=False)   # (C,) float, nan for filters that do not fire
    fires: np.ndarray = field(init=False)    # (C,) bool

    def __post_init__(self) -> None:
        mean_peak = self.values.mean(axis=0)
        self.fires = mean_peak >= self.threshold * max(float(mean_peak.max()), 1e-12)
        self.spread = np.array([peak_spread(self.positions[:, c], self.values[:, c], self.hw) if fire else np.nan
                                for c, fire in enumerate(self.fires)])

    @property
    def mean_spread(self) -> float:
        """The mean spread over the firing filters (nan when none fires on two images)."""
        valid = self.spread[~np.isnan(self.spread)]
        return float(valid.mean()) if len(valid) else float("nan")

    def counts(self, channel: int) -> np.ndarray:
        """(h, w) number of images whose peak for `channel` lies at each position (positive peaks only)."""
        heat = np.zeros(self.hw, np.float32)
        active = self.values[:, channel] > 0
        np.add.at(heat, (self.positions[active, channel, 0], self.positions[active, channel, 1]), 1)
        return heat

    def grid(self, tile_size: int = 48, colormap: str = "hot") -> np.ndarray:
        """One tile per filter: the heat of its peak counts, labelled `filter:spread` (gray when it does not fire)."""
        from . import render
        tiles, labels = [], []
        for c in range(self.values.shape[1]):
            tile = render.colorize(render.normalise(self.counts(c)), colormap)
            if not self.fires[c]:
                tile = (tile.mean(axis=2, keepdims=True).repeat(3, axis=2) * 0.4 + 90).astype(np.uint8)
            tiles.append(tile)
            labels.append(f"{c}:{self.spread[c]:.2f}" if not np.isnan(self.spread[c]) else f"{c}:-")
        return render.grid(tiles, labels=labels, tile_size=tile_size)

    def as_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "layer": self.layer, "map_size": list(self.hw),
                "threshold": self.threshold, "images": self.names, "mean_spread": _number(self.mean_spread),
                "firing_filters": int(self.fires.sum()),
                "filters": [{"filter": c, "fires": bool(self.fires[c]), "mean_peak": float(self.values[:, c].mean()),
                             "positive_images": int((self.values[:, c] > 0).sum()),
                             "spread": _number(self.spread[c]),
                             "peaks": self.positions[:, c].tolist()} for c in range(self.values.shape[1])]}

    def save(self, prefix: str | Path, tile_size: int = 48, colormap: str = "hot") -> dict[str, str]:
        """Write `<prefix>.png` (the grid of peak-count maps) and `<prefix>.json`; returns the paths."""
        from . import render
        prefix = str(prefix)
        png = render.write_png(prefix + ".png", self.grid(tile_size, colormap))
        Path(prefix + ".json").write_text(json.dumps(self.as_dict(), indent=2))
        return {"grid": str(png), "json": prefix + ".json"}


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def peak_spread(positions: np.ndarray, values: np.ndarray, hw: tuple[int, int]) -> float:
    """Mean distance of the (row, col) peaks with a positive value from their mean, / sqrt(h w); nan under 2."""
    points = positions[values > 0].astype(np.float64)
    if len(points) < 2:
        return float("nan")
    return float(np.linalg.norm(points - points.mean(axis=0), axis=1).mean() / math.sqrt(hw[0] * hw[1]))


def peak_positions(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((N, C, 2) row/col of each map's first maximum, (N, C) maxima) of maps (N, C, h, w)."""
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
    index = flat.argmax(axis=2)
    return np.stack(np.unravel_index(index, maps.shape[2:]), axis=-1), flat.max(axis=2)


def peaks(explainer: "Explainer", images: "str | Sequence[ImageSource]", layer: str | None = "auto",
          threshold: float = 0.1, output: str | None = None) -> Peaks:
    """Every filter's peak position at a spatial layer (a tensor name, `auto` or `last-conv`) over images."""
    from .features.common import FeatureError, as_maps, chunks, image_name, list_images
    if not 0 <= threshold <= 1:
        raise FeatureError(f"--threshold is a fraction of the strongest filter's mean peak; {threshold} is not "
                           "in [0, 1].")
    sources = list_images(images)
    name = explainer.model.resolve_layer(layer, output)
    info = explainer.model.spatial_info(name)
    positions, values = [], []
    for _, batch in chunks(explainer, sources, desc="peaks"):
        maps = as_maps(explainer.run(batch.x, [name])[name], info)
        where, value = peak_positions(maps)
        positions.append(where)
        values.append(value.astype(np.float32))
    hw = tuple(int(d) for d in maps.shape[2:])
    return Peaks(name, [image_name(s, i) for i, s in enumerate(sources)], hw, np.concatenate(positions),
                 np.concatenate(values), threshold)


def torch_spread(net: "torch.nn.Module", images: np.ndarray, threshold: float = 0.1) -> Peaks:
    """The same measure on a torch FaceNet's top conv layer (uint8 images (N, H, W)), for the trainer's logs."""
    import torch
    with torch.no_grad():
        maps = net.eval().top(torch.from_numpy(images).float()[:, None] / 255).numpy()
    where, value = peak_positions(maps)
    return Peaks("top", [f"image{i}" for i in range(len(images))], maps.shape[2:], where, value, threshold)


# ---- `onnxplain features peaks` ------------------------------------------------------------------------
@click.command("peaks", cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--layer", "-l", default="auto", show_default=True, help="Tensor name, auto or last-conv.")
@click.option("--threshold", default=0.1, show_default=True,
              help="A filter fires when its mean peak is at least this fraction of the layer's strongest.")
@click.option("--tile", default=48, show_default=True, help="Tile size in pixels.")
@click.option("--out", "out_dir", default="onnxplain-out", show_default=True, type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--preset", default=None, help="Preprocessing preset (default: model metadata or imagenet).")
@click.option("--labels", type=click.Path(), default=None, help="Class names, one per line.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]), show_default=True)
@click.option("--batch-size", default=32, show_default=True, help="Images per onnxruntime run.")
def peaks_command(model, images, layer, threshold, tile, out_dir, as_json, preset, labels, device, batch_size):
    """Where each filter of LAYER peaks over IMAGES (files or folders): a PNG of peak counts per filter,
    each filter's spread (mean distance of its peaks from their mean / map side) and the mean over firing filters."""
    from . import progress
    from .explainer import Explainer
    explainer = Explainer(model, preprocess=preset, labels=labels, device=device, batch_size=batch_size,
                          quiet=progress.QUIET)
    result = peaks(explainer, list(images), layer, threshold)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = result.save(out / "peaks", tile)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    click.echo(f"{len(result.names)} images, layer {result.layer} ({result.hw[0]}x{result.hw[1]})")
    click.echo(f"{'filter':>6}  {'fires':>5}  {'mean peak':>10}  {'positive':>8}  {'spread':>7}")
    for c in range(result.values.shape[1]):
        spread = "-" if np.isnan(result.spread[c]) else f"{result.spread[c]:.3f}"
        click.echo(f"{c:>6}  {'yes' if result.fires[c] else 'no':>5}  {result.values[:, c].mean():>10.4g}  "
                   f"{int((result.values[:, c] > 0).sum()):>8}  {spread:>7}")
    click.echo(f"mean spread over {int(result.fires.sum())} firing filters: {result.mean_spread:.4f}")
    click.echo(f"-> {files['grid']}, {files['json']}")
