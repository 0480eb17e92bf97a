"""The engine's decoder: the shared layer body (layer.py) with GQA attention over a paged KV cache and the
prepacked Linears, plus the mask adapter's deltas on AR-preserving models.

Tokens of all sequences in a step are packed into one [T, hidden] tensor (no padding between
sequences) for every matmul; only attention regroups them per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layer import fused_weights, layer_forward, rms_norm, rope_tables
from .linear import Linear
from .spec import ModelSpec


@dataclass(slots=True)
class AttnBatch:
    """Where each packed token goes for attention; built by the runner once per step."""
    positions: torch.Tensor     # [T] absolute position ids (padding rows: 0)
    write_slots: torch.Tensor   # [T] KV slot each token's K/V is written to (padding: the scratch slot)
    gather_slots: torch.Tensor  # [B * Lk] KV slots of each sequence's keys, padded per sequence
    query_rows: torch.Tensor    # [T] row of each packed token in the padded [B * Lq] query grid
    mask: torch.Tensor | None   # [B, 1, Lq, Lk] bool, True = may attend; None = attend to all
    num_seqs: int
    q_len: int
    k_len: int
    adapter_rows: torch.Tensor | None = None  # [M] packed rows holding a mask (AR-preserving models)


class KVCache:
    """K (after RoPE) and V side by side for every slot: kv[layer, slot] = [K heads | V heads].

    slot = page * page_size + offset; the last slot is scratch for padding rows. One tensor per layer
    means one scatter and one gather per layer per step.
    """

    def __init__(self, spec: ModelSpec, num_slots: int, dtype: torch.dtype, device: str):
        shape = (spec.num_layers, num_slots + 1, 2 * spec.num_kv_heads, spec.head_dim)
        # Written now, not lazily by the OS on first touch: the memory is the server's from the start
        # and RSS stays flat under load.
        self.kv = torch.empty(shape, dtype=dtype, device=device).zero_()
        self.scratch_slot = num_slots


class Decoder(torch.nn.Module):
    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.spec = spec
        self.embed = weights["embed"]
        self.norm = weights["norm"]
        self.lm_head = Linear(weights.get("lm_head", self.embed))
        self.layers = []
        self.adapter = None  # MaskAdapter of an AR-preserving D2F model, set by the loader
        for i in range(spec.num_layers):
            layer = {"attn_norm": weights[f"layers.{i}.attn_norm"], "mlp_norm": weights[f"layers.{i}.mlp_norm"]}
            for fname, (w, bias) in fused_weights(spec, weights, i).items():
                layer[fname] = Linear(w, bias)
            self.layers.append(layer)
        # Every row gets the same bits whatever the row count: no padding needed for batch invariance.
        self.row_invariant = self.lm_head.row_invariant
        self.cos, self.sin = rope_tables(spec, self.embed.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def _attention(self, li: int, q, k, v, kv: KVCache, batch: AttnBatch) -> torch.Tensor:
        """Writes this step's K/V into the paged cache, then attends over each sequence's cached keys."""
        spec = self.spec
        layer_kv = kv.kv[li]
        layer_kv.index_copy_(0, batch.write_slots, torch.cat([k, v], dim=1))
        b, lq, lk, nkv = batch.num_seqs, batch.q_len, batch.k_len, spec.num_kv_heads
        gathered = layer_kv.index_select(0, batch.gather_slots).view(b, lk, 2 * nkv, spec.head_dim)
        keys, vals = gathered[:, :, :nkv], gathered[:, :, nkv:]
        direct = b == 1 and q.shape[0] == lq  # one sequence, no padding rows: no regrouping needed
        if direct:
            queries = q.reshape(1, lq, spec.num_heads, spec.head_dim)
        else:
            grid = q.new_zeros(b * lq + 1, spec.num_heads, spec.head_dim)
            grid.index_copy_(0, batch.query_rows, q)
            queries = grid[:-1].view(b, lq, spec.num_heads, spec.head_dim)
        out = F.scaled_dot_product_attention(
            queries.transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2),
            attn_mask=batch.mask, enable_gqa=spec.num_heads != spec.num_kv_heads)
        out = out.transpose(1, 2).reshape(b * lq, spec.num_heads * spec.head_dim)
        if direct:
            return out
        # Padding rows of the packed batch read the appended zero row.
        out = torch.cat([out, out.new_zeros(1, out.shape[1])])
        return out.index_select(0, batch.query_rows)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, batch: AttnBatch, kv: KVCache) -> torch.Tensor:
        """Packed token ids [T] -> final-normed hidden states [T, hidden]."""
        spec = self.spec
        h = F.embedding(input_ids, self.embed)
        rows = batch.adapter_rows if self.adapter is not None and batch.adapter_rows is not None \
            and batch.adapter_rows.numel() else None
        layers, adapter = self.layers, self.adapter

        def lin(li: int, name: str, x: torch.Tensor) -> torch.Tensor:
            y = layers[li][name](x)
            return y if rows is None else adapter.delta(li, name, x, rows, y)

        if rows is not None and self.adapter.mask_embed is not None:
            h.index_copy_(0, rows, self.adapter.mask_embed.expand(rows.shape[0], -1))
        cos = self.cos.index_select(0, batch.positions)[:, None, :]
        sin = self.sin.index_select(0, batch.positions)[:, None, :]

        def attend(li: int, q, k, v) -> torch.Tensor:
            return self._attention(li, q, k, v, kv, batch)

        for li, layer in enumerate(layers):
            h = layer_forward(spec, li, layer["attn_norm"], layer["mlp_norm"], h, cos, sin, attend, lin)
        return rms_norm(h, self.norm, spec.rms_eps)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Only the rows the decoder needs; fp32 so softmax and thresholds never see bf16 rounding."""
        return self.lm_head(hidden).float()
