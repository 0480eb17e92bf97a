"""Attention for one sequence's window: a plain fp32 matmul path for single-query windows, SDPA otherwise.

torch's (2.13) CPU SDPA is a flash kernel with a fixed cost per call that dominates one query over a few
hundred keys (in bf16: ~200-300 us per SmolLM2 layer, against ~90 us for matmul-softmax-matmul), and
single-query windows are what AR decoding and the tail of D2F decoding run. Wider windows keep SDPA,
which is as fast or faster there (bench/attention.py).

The decoder calls this once per sequence with that sequence's own query and key lengths, never padded to
its batch neighbours', so a sequence's bits cannot depend on what else is in the batch. Exact mode also
stacks single-query rows that have key sets of one length (each row its own keys) into one call: the
single-query path is therefore row-invariant, each row's bits those it gets alone (tested).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention in the decoder's layout.

    q [B, Lq, Hq, D]; kv [B, Lk, 2 * Hkv, D], the KV cache's layout: K heads then V heads (Hq a multiple of
    Hkv: query head h reads KV head h // (Hq/Hkv)); mask [B, 1, Lq, Lk] bool (True = may attend) or None.
    Returns [B, Lq, Hq, D] in q's dtype.
    """
    hkv = kv.shape[2] // 2
    if q.shape[1] == 1:
        return matmul_attention(q, kv[:, :, :hkv], kv[:, :, hkv:], mask)
    k, v = kv[:, :, :hkv], kv[:, :, hkv:]
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Same contract as attention() (k, v [B, Lk, Hkv, D]), with scores, softmax and the weighted sum in
    fp32 whatever the model dtype (bf16 scores would be several times further from the exact answer than
    SDPA, which also keeps them in fp32). GQA without repeating K/V: the query heads sharing a KV head are
    rows of one product. A row with no visible key gives zeros, as SDPA's CPU kernel does.

    Both products are elementwise multiplies reduced over one axis, not matmuls: a reduction gives each
    output element the same summation order whatever B is, while CPU bmm's blocking (measured) changes
    with the batch count, so a stacked row would not get its lone bits. Cost is on par for one query."""
    b, lq, hq, d = q.shape
    hkv = k.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    g = hq // hkv
    qf = q.float().view(b, lq, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * lq, d)
    # One copy each: the cast to fp32 and the [B, Hkv, Lk, D] layout in the same op.
    kf = k.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    vf = v.permute(0, 2, 1, 3).to(torch.float32, memory_format=torch.contiguous_format)
    scores = (qf[:, :, :, None, :] * kf[:, :, None]).sum(-1).mul_(d ** -0.5)  # [B, Hkv, g * Lq, Lk]
    if mask is not None:
        hidden = mask.logical_not()[:, :, None].expand(b, 1, g, lq, mask.shape[-1]).reshape(b, 1, g * lq, -1)
        scores.masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs.nan_to_num_(0.0)  # fully masked rows: softmax over all -inf is NaN; SDPA gives 0
    out = (probs[..., None] * vf[:, :, None]).sum(-2)  # [B, Hkv, g * Lq, D]
    return out.to(q.dtype).view(b, hkv, g, lq, d).permute(0, 3, 1, 2, 4).reshape(b, lq, hq, d)
