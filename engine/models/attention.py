"""Attention over a short query window: batched matmuls instead of CPU SDPA where that is faster.

torch's (2.13) CPU SDPA is a flash kernel; in half precision with a single query it is several times
slower than with two queries (one query over 300 keys, SmolLM2 heads: ~300 us vs ~100 us per call),
and than a plain matmul-softmax-matmul (~160 us). Everywhere else SDPA is as fast or faster than the
matmul path (bench/attention.py), so only that case takes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# CPU GEMM gives a row the same bits for any row count that is a multiple of 8, but not for 1-7 rows
# (nor, in general, between a multiple of 8 and a count that is not): padding the matmuls' rows to a
# multiple of 8 keeps a sequence's output independent of how many queries its batch neighbours have.
ROW_ALIGN = 8
KEY_CHUNK = 64


def use_window(q: torch.Tensor) -> bool:
    """The matmul path pays only for one-query windows in half precision (measured, see module doc)."""
    return q.shape[1] == 1 and q.dtype != torch.float32


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention in the decoder's layout.

    q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] (Hq a multiple of Hkv: query head h reads KV head h // (Hq/Hkv)),
    mask [B, 1, Lq, Lk] bool (True = may attend) or None. Returns [B, Lq, Hq, D] in q's dtype.
    """
    if use_window(q):
        return window_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Same contract as attention(), always on the matmul path.

    Scores, softmax and the weighted sum are all fp32 whatever the model dtype: rounding scores or
    probabilities to bf16 would be several times further from the fp32 reference than SDPA is (SDPA
    also keeps scores in fp32). A row with no visible key gives zeros, as SDPA's CPU kernel does.
    """
    b, lq, hq, d = q.shape
    lk, hkv = k.shape[1], k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    g = hq // hkv
    rows = g * lq
    # GQA without repeating K/V: the g query heads sharing a KV head become g * Lq rows of one matmul,
    # padded with zero rows to a multiple of ROW_ALIGN (see there).
    qf = q.new_zeros(b, hkv, -(-rows // ROW_ALIGN) * ROW_ALIGN, d, dtype=torch.float32)
    qf[:, :, :rows].view(b, hkv, g, lq, d).copy_(q.view(b, lq, hkv, g, d).permute(0, 2, 3, 1, 4))
    # Scaling q rather than the scores: fewer elements, and exact when d is a power of 4 (scale 2^-k).
    qf.mul_(d ** -0.5)
    # K and V in fp32, contiguous per (sequence, KV head) and zero-padded to whole chunks of KEY_CHUNK
    # keys: every sequence's matmuls and softmax then see one fixed layout and reduction structure (a
    # row shorter than the vector width takes a scalar exp; one matmul over Lk keys blocks its sum by Lk),
    # so its bits do not depend on its neighbours' lengths. Padded keys get zero weight: exact zeros.
    chunks = -(-lk // KEY_CHUNK)
    keys = k.new_zeros(b, hkv, chunks * KEY_CHUNK, d, dtype=torch.float32)
    vals = torch.zeros_like(keys)
    keys[:, :, :lk] = k.transpose(1, 2)
    vals[:, :, :lk] = v.transpose(1, 2)
    scores = torch.matmul(qf, keys.transpose(-1, -2))  # [B, Hkv, rows + row padding, chunks * KEY_CHUNK]
    scores[..., lk:] = float("-inf")
    if mask is not None:
        scores[:, :, :rows, :lk].unflatten(2, (g, lq)).masked_fill_(mask.logical_not()[:, :, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs.nan_to_num_(0.0)  # fully masked rows: softmax over all -inf is NaN; SDPA gives 0
    # The weighted sum chunk by chunk (fixed K = KEY_CHUNK per matmul), then over chunks: a neighbour's
    # longer keys only add whole chunks of zero weight, which add exact zeros.
    m = probs.shape[2]
    parts = torch.matmul(probs.view(b, hkv, m, chunks, KEY_CHUNK).transpose(2, 3),
                         vals.view(b, hkv, chunks, KEY_CHUNK, d))
    out = parts.sum(dim=2)[:, :, :rows]  # [B, Hkv, g * Lq, D]
    return out.to(q.dtype).view(b, hkv, g, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, hq, d)
