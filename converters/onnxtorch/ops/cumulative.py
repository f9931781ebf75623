"""CumSum: running sums along an axis, inclusive or exclusive, forward or reversed."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register
from .common import scalar


@register("CumSum", since=11)
def cum_sum(x: torch.Tensor, axis: torch.Tensor, *, exclusive: int = 0, reverse: int = 0) -> torch.Tensor:
    """Cumulative sum along `axis` in x's dtype; exclusive sums start at 0 and leave out each element."""
    dim = int(scalar(axis))
    dim = dim + x.dim() if dim < 0 else dim
    values = x.flip(dim) if reverse else x
    if exclusive:
        pads = [0, 0] * (x.dim() - 1 - dim) + [1, 0]
        values = F.pad(values.narrow(dim, 0, max(x.shape[dim] - 1, 0)), pads)
    result = torch.cumsum(values, dim).to(x.dtype)
    return result.flip(dim) if reverse else result
