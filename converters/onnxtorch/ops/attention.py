"""Attention and RMSNormalization (opset 23), as the ONNX spec defines them."""
from __future__ import annotations

import math

import torch

from ..checks import refuses
from ..errors import UnsupportedModel
from ..registry import register


@register("RMSNormalization", since=23)
def rms_normalization(x: torch.Tensor, scale: torch.Tensor, *, axis: int = -1, epsilon: float = 1e-5,
                      stash_type: int = 1) -> torch.Tensor:
    """x / sqrt(mean(x^2 over the axes from `axis` on) + epsilon) * scale, computed in float32 or wider."""
    axis = axis + x.dim() if axis < 0 else axis
    wide = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    mean_square = wide.pow(2).mean(dim=tuple(range(axis, x.dim())), keepdim=True)
    return (wide / torch.sqrt(mean_square + epsilon)).to(x.dtype) * scale


def heads_first(t: torch.Tensor, heads: int | None) -> torch.Tensor:
    """[B, S, heads*D] as [B, heads, S, D]; 4-D tensors are already so."""
    if t.dim() == 4:
        return t
    if not heads:
        raise UnsupportedModel("Attention with 3-D inputs needs q_num_heads and kv_num_heads")
    b, s, hidden = t.shape
    return t.reshape(b, s, heads, hidden // heads).transpose(1, 2)


def padding_refusal(inputs: list, *, is_causal: int = 0, **_) -> str | None:
    """nonpad_kv_seqlen (opset 24) is converted as a key padding mask; with causal masking its per-batch
    offset rule changed between onnx releases, and the spec forbids it with a past cache."""
    if len(inputs) < 7 or inputs[6] is None:
        return None
    if is_causal:
        return "combines nonpad_kv_seqlen with is_causal, which the converter does not handle"
    if len(inputs) > 4 and any(i is not None for i in inputs[4:6]):
        return "combines nonpad_kv_seqlen with past key/value inputs, which the spec forbids"
    return None


def key_padding(lengths: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """[B, 1, 1, total] True where key j < the sample's non-padding length (nonpad_kv_seqlen)."""
    return (torch.arange(total, device=device) < lengths.to(device).reshape(-1, 1)).reshape(-1, 1, 1, total)


def widen_mask(mask: torch.Tensor, total: int, past: bool) -> torch.Tensor:
    """A mask shorter than the keys: with a past cache it covers the new keys only, and the past ones stay
    visible (onnxruntime); without one, the keys beyond it are masked out (the spec's reference)."""
    shape = mask.shape[:-1] + (total - mask.shape[-1],)
    if mask.dtype == torch.bool:
        pad = torch.full(shape, past, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.full(shape, 0.0 if past else -math.inf, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask] if past else [mask, pad], -1)


@refuses(padding_refusal)
@register("Attention", since=23)
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
              past_key: torch.Tensor | None = None, past_value: torch.Tensor | None = None,
              nonpad_kv_seqlen: torch.Tensor | None = None, *,
              is_causal: int = 0, kv_num_heads: int | None = None, q_num_heads: int | None = None,
              qk_matmul_output_mode: int = 0, scale: float | None = None, softcap: float = 0.0,
              softmax_precision: int | None = None, output_count: int = 1):
    """Scaled dot-product attention with optional mask (bool: attend where true; float: added), causal
    masking offset by the past length, padded keys past nonpad_kv_seqlen masked out (opset 24), grouped
    key/value heads, softcap; returns Y, present key/value and
    the QK values at the stage qk_matmul_output_mode names, in onnxruntime's order (0 scaled QK, 1 softcapped,
    2 plus mask, 3 softmax)."""
    three_d = q.dim() == 3
    qh = heads_first(q, q_num_heads)
    kh = heads_first(k, kv_num_heads)
    vh = heads_first(v, kv_num_heads)
    if past_key is not None:
        kh = torch.cat([past_key, kh], 2)
    if past_value is not None:
        vh = torch.cat([past_value, vh], 2)
    present_key, present_value = kh, vh
    groups = qh.shape[1] // kh.shape[1]
    if groups > 1:
        kh, vh = kh.repeat_interleave(groups, 1), vh.repeat_interleave(groups, 1)
    factor = scale if scale is not None else 1.0 / math.sqrt(qh.shape[-1])
    qk = (qh * math.sqrt(factor)) @ (kh * math.sqrt(factor)).transpose(-1, -2)
    stages = [qk]
    total, queries = kh.shape[2], qh.shape[2]
    bias = torch.zeros((queries, total), dtype=qk.dtype, device=qk.device)
    if is_causal:  # query i sees keys up to i + the past length (top-left aligned, as onnxruntime)
        past = past_key.shape[2] if past_key is not None else 0
        allowed = torch.ones((queries, total), dtype=torch.bool, device=qk.device).tril(past)
        bias = bias.masked_fill(~allowed, torch.finfo(qk.dtype).min)  # onnxruntime: lowest, not -inf
    if attn_mask is not None:
        mask = attn_mask.to(qk.device)
        if mask.shape[-1] < total:
            mask = widen_mask(mask, total, past_key is not None)
        if mask.dtype == torch.bool:
            bias = bias.masked_fill(~mask, torch.finfo(qk.dtype).min)
        else:
            bias = bias + mask.to(qk.dtype)
    if nonpad_kv_seqlen is not None:
        bias = bias.masked_fill(~key_padding(nonpad_kv_seqlen, total, qk.device), torch.finfo(qk.dtype).min)
    capped = softcap * torch.tanh(qk / softcap) if softcap > 0 else qk  # onnxruntime caps before the mask
    scores = capped + bias
    stages += [capped, scores]
    weights = torch.softmax(scores, -1)
    stages.append(weights)
    y = weights @ vh
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    outputs = (y, present_key, present_value, stages[qk_matmul_output_mode])
    return outputs[0] if output_count <= 1 else outputs[:output_count]
