"""Image priors for activation maximisation (Yosinski et al. 2015, PytorchRevelio), on unit images (N, C, h, w).

Blurs run in opencv on the CPU (one copy per call, every k steps); the rest stays on the device.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def _each_image(u: torch.Tensor, fn) -> torch.Tensor:
    """Apply `fn` (HWC float32 -> HWC or HW float32) to every image of a unit batch, via numpy."""
    images = u.detach().to("cpu", torch.float32).numpy().transpose(0, 2, 3, 1)
    out = []
    for image in images:
        result = fn(np.ascontiguousarray(image))
        out.append(result.reshape(image.shape))
    return torch.as_tensor(np.stack(out).transpose(0, 3, 1, 2), dtype=u.dtype, device=u.device).contiguous()


def gaussian_blur(u: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each image through cv2.GaussianBlur (kernel from sigma): removes the high frequencies gradients love."""
    return _each_image(u, lambda image: cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma)))


def bilateral_blur(u: torch.Tensor, sigma_color: float, sigma_space: float) -> torch.Tensor:
    """Each image through cv2.bilateralFilter in pixel units (0..255): smooths flat areas but keeps edges."""
    def blur(image: np.ndarray) -> np.ndarray:
        pixels = (image + 1) * 127.5
        if pixels.shape[2] not in (1, 3):  # opencv filters 1- or 3-channel images only
            return image
        return cv2.bilateralFilter(pixels, -1, float(sigma_color), float(sigma_space)) / 127.5 - 1
    return _each_image(u, blur)


def jitter(u: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """The batch rolled by a random (dy, dx) in [-pixels, pixels], drawn from the seeded CPU generator."""
    if pixels <= 0:
        return u
    dy, dx = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    return torch.roll(u, shifts=(dy, dx), dims=(2, 3))


def _clip_below(u: torch.Tensor, measure: torch.Tensor, percentile: float) -> torch.Tensor:
    """Set to mid-grey (0) the pixels whose measure (N, h, w) is below each image's percentile."""
    flat = measure.flatten(1)
    threshold = torch.quantile(flat, percentile / 100.0, dim=1).reshape(-1, 1, 1)
    return u * (measure >= threshold)[:, None].to(u.dtype)


def clip_small_norm(u: torch.Tensor, percentile: float) -> torch.Tensor:
    """Yosinski's norm clipping: pixels whose colour norm is in the lowest `percentile` % become mid-grey."""
    return _clip_below(u, u.norm(dim=1), percentile)


def clip_small_contribution(u: torch.Tensor, grad: torch.Tensor, percentile: float) -> torch.Tensor:
    """Yosinski's contribution clipping: pixels whose |sum_c u * grad| (the first-order change of the
    objective when the pixel goes to mid-grey) is in the lowest `percentile` % become mid-grey."""
    return _clip_below(u, (u * grad).sum(1).abs(), percentile)


def resize(u: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Unit images resized bilinearly (area-averaged when shrinking) to `size`."""
    if tuple(u.shape[-2:]) == tuple(size):
        return u
    shrinking = size[0] < u.shape[-2]
    return F.interpolate(u, size=tuple(size), mode="area" if shrinking else "bilinear",
                         **({} if shrinking else {"align_corners": False}))


def octave_sizes(size: tuple[int, int], octaves: int, scale: float) -> list[tuple[int, int]]:
    """Image sizes from the smallest octave to full size, each `scale` times the previous."""
    return [(max(1, round(size[0] / scale ** k)), max(1, round(size[1] / scale ** k)))
            for k in range(octaves - 1, -1, -1)]


def total_variation(u: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Mean over pixels of ((dx)^2 + (dy)^2)^(beta/2) per image (Mahendran & Vedaldi's TV^beta), shape (N,)."""
    dy = u[:, :, 1:, :-1] - u[:, :, :-1, :-1]
    dx = u[:, :, :-1, 1:] - u[:, :, :-1, :-1]
    squared = dx.pow(2) + dy.pow(2)
    value = squared if beta == 2 else (squared + 1e-8).pow(beta / 2)
    return value.flatten(1).mean(1)


def alpha_norm(u: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """Mean of |u|^alpha per image (Mahendran & Vedaldi's alpha-norm prior, keeps pixels in range), shape (N,)."""
    return u.abs().pow(alpha).flatten(1).mean(1)
