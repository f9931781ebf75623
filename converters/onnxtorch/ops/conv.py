"""Conv and ConvTranspose (1-D, 2-D, 3-D; groups, dilations, explicit and automatic pads)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def same_pads(sizes, kernel, strides, dilations, auto_pad: str) -> list[int]:
    """Begin pads then end pads that make the output size ceil(in / stride) (auto_pad SAME_*)."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def torch_pad_order(pads: list[int]) -> list[int]:
    """ONNX pads [b1, b2, .., e1, e2, ..] as F.pad's (b_last, e_last, .., b1, e1)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def resolve_pads(x: torch.Tensor, kernel, strides, dilations, pads, auto_pad: str) -> list[int]:
    """Explicit pads for an input, whatever form the node gave them in."""
    n = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(x.shape[2:], kernel, strides, dilations, auto_pad)
    if auto_pad == "VALID" or pads is None:
        return [0] * (2 * n)
    return list(pads)


@register("Conv")
def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, auto_pad: str = "NOTSET",
         dilations=None, group: int = 1, kernel_shape=None, pads=None, strides=None) -> torch.Tensor:
    """ONNX Conv: symmetric pads go to the conv call, asymmetric ones through an explicit zero F.pad."""
    n = weight.dim() - 2
    kernel = kernel_shape or list(weight.shape[2:])
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    pads = resolve_pads(x, kernel, strides, dilations, pads, auto_pad)
    if pads[:n] == pads[n:]:
        padding = pads[:n]
    else:
        x = F.pad(x, torch_pad_order(pads))
        padding = 0
    return CONV[n](x, weight, bias, strides, padding, dilations, group)


@register("ConvTranspose")
def conv_transpose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                   auto_pad: str = "NOTSET", dilations=None, group: int = 1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None) -> torch.Tensor:
    """ONNX ConvTranspose: pads crop the full output; output_shape/auto_pad set the pads as the spec says."""
    n = weight.dim() - 2
    kernel = kernel_shape or list(weight.shape[2:])
    strides = strides or [1] * n
    dilations = dilations or [1] * n
    output_padding = output_padding or [0] * n
    sizes = x.shape[2:]
    full = [s * (i - 1) + (k - 1) * d + 1 for s, i, k, d in zip(strides, sizes, kernel, dilations)]
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-n:] if output_shape is not None else [i * s for i, s in zip(sizes, strides)]
        totals = [f + op - t for f, op, t in zip(full, output_padding, target)]
        if auto_pad == "SAME_UPPER":
            begins = [t // 2 for t in totals]
        else:
            begins = [t - t // 2 for t in totals]
        pads = begins + [t - b for t, b in zip(totals, begins)]
    elif auto_pad == "VALID" or pads is None:
        pads = [0] * (2 * n)
    if pads[:n] == pads[n:] and all(p < max(s, d) for p, s, d in zip(output_padding, strides, dilations)):
        return CONV_TRANSPOSE[n](x, weight, bias, strides, pads[:n], output_padding, group, dilations)
    y = CONV_TRANSPOSE[n](x, weight, None, strides, 0, 0, group, dilations)
    crop = [-p for p in pads[:n]] + [op - p for op, p in zip(output_padding, pads[n:])]
    y = F.pad(y, torch_pad_order(crop))
    if bias is not None:
        y = y + bias.reshape([1, -1] + [1] * n)
    return y

