"""Attention for one sequence's window: SDPA for a window of several queries, a fixed-shape decode call for
single-query rows.

torch's (2.13) CPU SDPA is a flash kernel with a fixed cost per call that dominates one query over a few
hundred keys, and single-query rows are what AR decoding (and exact mode's clean rows) run, so those go
through `decode_attention`: two fp32 matmuls and a softmax in a call whose shapes do not depend on how
many rows it carries. Wider windows (prefill, D2F blocks) keep SDPA, which is as fast or faster there.

The decoder calls attention once per sequence with that sequence's own query and key counts, never padded
to its batch neighbours', so a sequence's bits cannot depend on what else is in the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# A decode call always computes ROWS query rows over a multiple of BUCKET keys. A row's bits then depend
# only on its own query, the keys it sees, the key count rounded up to BUCKET and the GEMM row it sits in,
# never on the call's other rows: a matmul's output row reads only its own input row, given the same
# shapes. AR decoding puts the row for position p in GEMM row p % ROWS over bucket(p + 1) keys; a call
# that gives a row the same GEMM row and key count reproduces AR's bits exactly, so exact mode verifies
# several positions, and drafts at others, in one call per layer instead of one call per row. Four rows
# hold an exact-mode forward at block 2 (the last committed token, the draft, its mask, the fallback
# mask). The padding rows are real work for AR's lone row: measured interleaved at 300 keys, a call
# costs 141 us with 4 rows against 163 with 8 (the mul-sum kernel this replaced: 115-130).
ROWS = 4
BUCKET = 64


def bucket(keys: int) -> int:
    """Keys a decode call computes over for `keys` real ones."""
    return -(-keys // BUCKET) * BUCKET


def attention(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention (SDPA) in the decoder's layout.

    q [B, Lq, Hq, D]; kv [B, Lk, 2 * Hkv, D], the KV cache's layout: K heads then V heads (Hq a multiple of
    Hkv: query head h reads KV head h // (Hq/Hkv)); mask [B, 1, Lq, Lk] bool (True = may attend) or None.
    Returns [B, Lq, Hq, D] in q's dtype.
    """
    hkv = kv.shape[2] // 2
    k, v = kv[:, :, :hkv], kv[:, :, hkv:]
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
        enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)


def decode_attention(q: torch.Tensor, kv: torch.Tensor, valid: int, place: torch.Tensor | slice,
                     bias: torch.Tensor) -> torch.Tensor:
    """Single-query rows in one fixed-shape call.

    q [R, Hq, D] (R <= ROWS); kv [M, 2 * Hkv, D] with M = bucket(valid): the first `valid` are the keys,
    the rest anything (zeroed here, so a stale NaN in a slot past them cannot leak in); place [R] the GEMM
    row of each query row, distinct (a slice when they are consecutive: no index ops); bias [ROWS, M]
    fp32: 0 where the row in that GEMM row may attend, -inf elsewhere (every row sees at least one key). Scores, softmax and the weighted sum run in fp32
    whatever the model dtype (bf16 scores would be several times further from the exact answer than SDPA,
    which also keeps them in fp32). GQA without repeating K/V: the query heads sharing a KV head are rows
    of one product. Returns [R, Hq * D] in q's dtype.
    """
    r, hq, d = q.shape
    m, hkv = kv.shape[0], kv.shape[1] // 2
    if hq % hkv:
        raise ValueError(f"query heads ({hq}) must be a multiple of KV heads ({hkv})")
    g = hq // hkv
    qf = q.new_zeros((hkv, ROWS, g, d), dtype=torch.float32)
    mine = q.view(r, hkv, g, d).transpose(0, 1)
    if isinstance(place, slice):
        qf[:, place] = mine
    else:
        qf.index_copy_(1, place, mine.float())
    # One copy: the fp32 cast into the [heads, keys, D] layout both products read without another copy
    # (and never a view of the cache, which the zeroing below would write to).
    kvf = torch.empty((2 * hkv, m, d), dtype=torch.float32, device=kv.device).copy_(kv.permute(1, 0, 2))
    if valid < m:
        kvf[:, valid:] = 0
    scores = torch.matmul(qf.view(hkv, ROWS * g, d), kvf[:hkv].transpose(1, 2)).mul_(d ** -0.5)
    scores.view(hkv, ROWS, g, m).add_(bias[:, None])
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, kvf[hkv:]).view(hkv, ROWS, g, d)
    mine = (out[:, place] if isinstance(place, slice) else out.index_select(1, place)).transpose(0, 1)
    return torch.empty(mine.shape, dtype=q.dtype, device=q.device).copy_(mine).view(r, hq * d)  # one copy
