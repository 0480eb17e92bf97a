"""GGUF Q4_1 tensors read raw into Int4Weights: the GGUF's own 4-bit values, scales and mins, no rounding.

A Q4_1 block is 20 bytes for 32 consecutive weights of a row: fp16 d, fp16 m, then 16 bytes whose low
nibbles are weights 0..15 and high nibbles weights 16..31; w = d * q + m.
"""
from __future__ import annotations

import numpy as np
import torch

from .default_model import _field, _hf_name, _unpermute
from .quant import Int4Weights

Q4_1_BLOCK = 32
_Q4_1_BYTES = 20


def int4_from_q4_1(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> Int4Weights:
    """Int4Weights holding Q4_1 blocks exactly: q as stored, scale = d and min = m kept in fp16.

    qs: uint8 [rows, blocks, 16] (the block's packed nibbles), d and m: fp16 [rows, blocks].
    Int4Linear derives the kernel's scales from d and m: exact with fp32 activations, rounded to bf16
    with bf16 activations (see Int4Linear).
    """
    if qs.dtype != torch.uint8 or qs.dim() != 3 or qs.shape[2] != Q4_1_BLOCK // 2:
        raise ValueError(f"Q4_1: qs must be uint8 [rows, blocks, 16], got {qs.dtype} {tuple(qs.shape)}")
    if d.dtype != torch.float16 or m.dtype != torch.float16:
        raise ValueError(f"Q4_1: d and m must be fp16, got {d.dtype} and {m.dtype}")
    q = torch.cat([qs & 15, qs >> 4], dim=2).reshape(qs.shape[0], -1)  # nibbles are 0..15 by construction
    return Int4Weights(q[:, 0::2] | q[:, 1::2] << 4, d, m, Q4_1_BLOCK)


def split_q4_1(raw: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_1 tensor's bytes (as GGUFReader gives them) -> qs [rows, blocks, 16], d, m [rows, blocks]."""
    if cols % Q4_1_BLOCK:
        raise ValueError(f"Q4_1: row length {cols} is not a multiple of {Q4_1_BLOCK}")
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, cols // Q4_1_BLOCK, _Q4_1_BYTES)
    d = torch.from_numpy(blocks[:, :, 0:2].copy().view(np.float16)[..., 0])
    m = torch.from_numpy(blocks[:, :, 2:4].copy().view(np.float16)[..., 0])
    return torch.from_numpy(blocks[:, :, 4:].copy()), d, m


def read_q4_1(source) -> dict[str, Int4Weights]:
    """Every Q4_1 tensor of a llama GGUF (a path or an open GGUFReader) by its HF name, q/k rows in HF order.

    llama.cpp stores q and k with each head's rotary halves interleaved; the dequantizing converter puts
    them back (default_model._unpermute). A row is whole blocks, so the same row order is applied to
    q, d and m and nothing is requantized.
    """
    from gguf import GGMLQuantizationType, GGUFReader

    r = source if isinstance(source, GGUFReader) else GGUFReader(source)
    arch = _field(r, "general.architecture")
    heads = _field(r, f"{arch}.attention.head_count")
    kv_heads = _field(r, f"{arch}.attention.head_count_kv", heads)
    out = {}
    for t in r.tensors:
        if t.tensor_type != GGMLQuantizationType.Q4_1:
            continue
        cols, rows = (int(n) for n in t.shape)
        w = int4_from_q4_1(*split_q4_1(t.data, rows, cols))
        n_heads = heads if t.name.endswith("attn_q.weight") else kv_heads if t.name.endswith("attn_k.weight") else 0
        if n_heads:
            order = torch.from_numpy(_unpermute(np.arange(rows), n_heads).copy())
            w = w.rows(order)
        out[_hf_name(t.name)] = w
    return out
