"""Interpretable CNNs (Zhang, Wu & Zhu, CVPR 2018): the paper's interpretable layer and its filter loss (torch).

`templates` builds the paper's position templates, `template_mask` (and the module `InterpretableMask`)
keeps only the neighbourhood of each channel's peak, `filter_loss` is minus the mutual information between
a layer's maps and the templates, and `FaceNet` is the small face-vs-non-face net with the layer on top.
The training recipe is models/train_interpretable.py; how stable filters' peaks are, measured on the ONNX
file, is onnxplain.features.peaks (`onnxplain features peaks`).

Importing this module does not import torch: torch is imported inside the functions, and the nn.Module
classes are built on first access (module `__getattr__`).
"""
from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

BETA = 4.0  # template falloff, as in the paper


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
