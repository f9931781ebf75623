"""Detector ops: NonMaxSuppression (forward only, as onnxruntime selects), RoiAlign (differentiable bilinear
sampling, onnxruntime's boundary rules) and GridSample (torch's grid_sample with the ONNX mode names)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModel
from ..registry import register
from .common import scalar


def corners(boxes: torch.Tensor, center_point_box: int) -> torch.Tensor:
    """[..., 4] boxes as (y_min, x_min, y_max, x_max), from corners in any order or from centres."""
    if center_point_box:
        xc, yc, w, h = boxes.unbind(-1)
        return torch.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], -1)
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.stack([torch.minimum(y1, y2), torch.minimum(x1, x2), torch.maximum(y1, y2),
                        torch.maximum(x1, x2)], -1)


def suppresses(box: torch.Tensor, others: torch.Tensor, threshold: float) -> torch.Tensor:
    """Whether each of `others` overlaps `box` by IoU > threshold (onnxruntime's test: an empty
    intersection or a box of no area never suppresses)."""
    top = torch.maximum(box[0], others[:, 0])
    left = torch.maximum(box[1], others[:, 1])
    bottom = torch.minimum(box[2], others[:, 2])
    right = torch.minimum(box[3], others[:, 3])
    overlapping = (bottom > top) & (right > left)
    intersection = (bottom - top) * (right - left)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - intersection
    valid = overlapping & (intersection > 0) & (area > 0) & (areas > 0) & (union > 0)
    return valid & (intersection / torch.where(valid, union, torch.ones_like(union)) > threshold)


def select_class(boxes: torch.Tensor, scores: torch.Tensor, limit: int, iou: float,
                 score_threshold: float | None) -> list[int]:
    """Greedy selection for one batch and class: highest score first (ties: lower index), at most `limit`."""
    candidates = torch.arange(scores.shape[0])
    if score_threshold is not None:
        candidates = candidates[scores > score_threshold]
    order = candidates[torch.sort(-scores[candidates], stable=True).indices]
    alive = torch.ones(order.shape[0], dtype=torch.bool)
    chosen: list[int] = []
    ordered = boxes[order]
    for position in range(order.shape[0]):
        if len(chosen) >= limit:
            break
        if not alive[position]:
            continue
        chosen.append(int(order[position]))
        alive[position + 1:] &= ~suppresses(ordered[position], ordered[position + 1:], iou)
    return chosen


@register("NonMaxSuppression", since=10)
def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, max_output_boxes_per_class=None,
                        iou_threshold=None, score_threshold=None, *, center_point_box: int = 0) -> torch.Tensor:
    """[num_selected, 3] int64 (batch, class, box) triples, per batch then class, in selection order.

    Forward only: the selection is discrete, so no gradient flows through it.
    """
    limit = max(int(scalar(max_output_boxes_per_class, 0)), 0)
    iou = float(scalar(iou_threshold, 0.0))
    threshold = None if score_threshold is None or score_threshold.numel() == 0 else float(scalar(score_threshold))
    device = boxes.device
    boxes = corners(boxes.detach().float().cpu(), center_point_box)
    scores = scores.detach().float().cpu()
    rows: list[tuple[int, int, int]] = []
    if limit > 0:
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                rows += [(b, c, i) for i in select_class(boxes[b], scores[b, c], limit, iou, threshold)]
    return torch.tensor(rows, dtype=torch.int64, device=device).reshape(-1, 3)


def sample_positions(start: torch.Tensor, bin_size: torch.Tensor, bins: int, grid: int) -> torch.Tensor:
    """[R, bins * grid] sample coordinates along one axis: `grid` evenly spaced points inside each bin."""
    steps = torch.arange(bins, dtype=start.dtype, device=start.device)[:, None] * bin_size[:, None, None]
    offsets = (torch.arange(grid, dtype=start.dtype, device=start.device) + 0.5)[None, :] / grid
    within = offsets[None] * bin_size[:, None, None]
    return (start[:, None, None] + steps + within).reshape(start.shape[0], bins * grid)


def bilinear_terms(coord: torch.Tensor, size: int):
    """Low/high neighbour indices, their weights and a validity mask, with onnxruntime's boundary rules:
    a sample beyond one pixel outside the map contributes 0; one just outside reads the edge."""
    valid = (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.floor().to(torch.int64)
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    frac = coord - low.to(coord.dtype)
    return low, high, 1 - frac, frac, valid


def roi_group(x: torch.Tensor, rois: torch.Tensor, batch: torch.Tensor, out_h: int, out_w: int,
              grid_h: int, grid_w: int, starts, bins, mode: str) -> torch.Tensor:
    """RoiAlign of rois that share one sampling grid: [R, C, out_h, out_w]."""
    height, width = x.shape[2], x.shape[3]
    ys = sample_positions(starts[1], bins[1], out_h, grid_h)
    xs = sample_positions(starts[0], bins[0], out_w, grid_w)
    y0, y1, wy0, wy1, vy = bilinear_terms(ys, height)
    x0, x1, wx0, wx1, vx = bilinear_terms(xs, width)
    valid = (vy[:, :, None] & vx[:, None, :]).to(x.dtype)
    b = batch[:, None, None]

    def read(yi, xi):  # [R, Ys, Xs, C]
        return x[b, :, yi[:, :, None], xi[:, None, :]]
    terms = [read(y0, x0) * (wy0[:, :, None] * wx0[:, None, :] * valid)[..., None],
             read(y0, x1) * (wy0[:, :, None] * wx1[:, None, :] * valid)[..., None],
             read(y1, x0) * (wy1[:, :, None] * wx0[:, None, :] * valid)[..., None],
             read(y1, x1) * (wy1[:, :, None] * wx1[:, None, :] * valid)[..., None]]
    rois_count, channels = rois.shape[0], x.shape[1]
    if mode == "avg":
        samples = terms[0] + terms[1] + terms[2] + terms[3]
        samples = samples.reshape(rois_count, out_h, grid_h, out_w, grid_w, channels)
        pooled = samples.sum((2, 4)) / max(grid_h * grid_w, 1)
    else:
        samples = torch.stack(terms).amax(0).reshape(rois_count, out_h, grid_h, out_w, grid_w, channels)
        pooled = samples.amax(4).amax(2)
    return pooled.permute(0, 3, 1, 2)


@register("RoiAlign", since=16)
def roi_align(x: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, *,
              coordinate_transformation_mode: str = "half_pixel", mode: str = "avg", output_height: int = 1,
              output_width: int = 1, sampling_ratio: int = 0, spatial_scale: float = 1.0) -> torch.Tensor:
    """[num_rois, C, output_height, output_width] bilinear samples averaged (or maxed) over each bin;
    differentiable in x and in the roi coordinates."""
    return roi_align_core(x, rois, batch_indices, coordinate_transformation_mode, mode, output_height,
                          output_width, sampling_ratio, spatial_scale)


@register("RoiAlign", since=10, until=15)
def roi_align_10(x: torch.Tensor, rois: torch.Tensor, batch_indices: torch.Tensor, *, mode: str = "avg",
                 output_height: int = 1, output_width: int = 1, sampling_ratio: int = 0,
                 spatial_scale: float = 1.0) -> torch.Tensor:
    """RoiAlign-10: no coordinate mode attribute; rois are read as output_half_pixel."""
    return roi_align_core(x, rois, batch_indices, "output_half_pixel", mode, output_height, output_width,
                          sampling_ratio, spatial_scale)


def roi_align_core(x, rois, batch_indices, transform: str, mode: str, out_h: int, out_w: int,
                   sampling_ratio: int, spatial_scale: float) -> torch.Tensor:
    """RoiAlign for either coordinate mode: rois grouped by sampling grid, each group sampled at once."""
    if mode not in ("avg", "max"):
        raise UnsupportedModel(f"RoiAlign mode '{mode}' is not supported")
    if transform not in ("half_pixel", "output_half_pixel"):
        raise UnsupportedModel(f"RoiAlign coordinate_transformation_mode '{transform}' is not supported")
    rois = rois.to(device=x.device, dtype=x.dtype)
    batch = batch_indices.to(device=x.device, dtype=torch.int64).reshape(-1)
    offset = 0.5 if transform == "half_pixel" else 0.0
    scaled = rois * spatial_scale - offset
    start_w, start_h, end_w, end_h = scaled.unbind(-1)
    roi_w, roi_h = end_w - start_w, end_h - start_h
    if transform == "output_half_pixel":
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / out_w, roi_h / out_h
    if sampling_ratio > 0:
        grids = [(sampling_ratio, sampling_ratio)] * rois.shape[0]
    else:
        grids = list(zip((roi_h.detach() / out_h).ceil().to(torch.int64).tolist(),
                         (roi_w.detach() / out_w).ceil().to(torch.int64).tolist()))
    out = x.new_zeros((rois.shape[0], x.shape[1], out_h, out_w))
    for grid in sorted(set(grids)):
        chosen = torch.tensor([i for i, g in enumerate(grids) if g == grid], device=x.device, dtype=torch.int64)
        if grid[0] <= 0 or grid[1] <= 0:
            continue
        pooled = roi_group(x, rois[chosen], batch[chosen], out_h, out_w, grid[0], grid[1],
                           (start_w[chosen], start_h[chosen]), (bin_w[chosen], bin_h[chosen]), mode)
        out = out.index_copy(0, chosen, pooled)
    return out


GRID_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
              "cubic": "bicubic"}


@register("GridSample", since=16)
def grid_sample(x: torch.Tensor, grid: torch.Tensor, *, align_corners: int = 0, mode: str = "bilinear",
                padding_mode: str = "zeros") -> torch.Tensor:
    """torch.nn.functional.grid_sample; opset 16 names the modes bilinear/bicubic, opset 20 linear/cubic."""
    if mode not in GRID_MODES:
        raise UnsupportedModel(f"GridSample mode '{mode}' is not supported")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise UnsupportedModel(f"GridSample padding_mode '{padding_mode}' is not supported")
    if GRID_MODES[mode] == "bicubic" and x.dim() != 4:
        raise UnsupportedModel("GridSample cubic mode is supported for 2-D images only")
    return F.grid_sample(x, grid.to(x.dtype), mode=GRID_MODES[mode], padding_mode=padding_mode,
                         align_corners=bool(align_corners))
