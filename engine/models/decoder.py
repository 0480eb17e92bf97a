"""The one decoder: RMSNorm, RoPE, GQA attention over a paged KV cache, SwiGLU, optional qkv bias.

Tokens of all sequences in a step are packed into one [T, hidden] tensor (no padding between
sequences) for every matmul; only attention regroups them per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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


def rope_tables(spec: ModelSpec, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_positions, head_dim / 2], computed in fp64 and kept in fp32 whatever the model dtype
    (LLaDA computes RoPE in fp32)."""
    half = spec.head_dim // 2
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = torch.arange(spec.max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves of the last dimension, in fp32."""
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)  # one fused op
    # Half precision: normalise in fp32, scale after casting back, as the reference models do.
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


class Decoder(torch.nn.Module):
    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.spec = spec
        # Fused projections: one matmul for q|k|v and one for gate|up per layer.
        self.embed = weights["embed"]
        self.norm = weights["norm"]
        self.lm_head = Linear(weights.get("lm_head", self.embed))
        self.layers = []
        self.adapter = None  # MaskAdapter of an AR-preserving D2F model, set by the loader
        for i in range(spec.num_layers):
            p = f"layers.{i}."
            bias = None
            if spec.qkv_bias:
                bias = torch.cat([weights[p + "q_bias"], weights[p + "k_bias"], weights[p + "v_bias"]])
            self.layers.append({
                "attn_norm": weights[p + "attn_norm"],
                "qkv": Linear(torch.cat([weights[p + "q"], weights[p + "k"], weights[p + "v"]]), bias),
                "o": Linear(weights[p + "o"]),
                "mlp_norm": weights[p + "mlp_norm"],
                "gate_up": Linear(torch.cat([weights[p + "gate"], weights[p + "up"]])),
                "down": Linear(weights[p + "down"]),
            })
            for name in ("q", "k", "v", "o", "gate", "up", "down"):
                weights.pop(p + name, None)  # the fused / packed copies replace them
        # Every row gets the same bits whatever the row count: no padding needed for batch invariance.
        self.row_invariant = self.lm_head.row_invariant
        self.cos, self.sin = rope_tables(spec, self.embed.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def _attention(self, q, kv_new, li: int, kv: KVCache, batch: AttnBatch) -> torch.Tensor:
        spec = self.spec
        layer_kv = kv.kv[li]
        layer_kv.index_copy_(0, batch.write_slots, kv_new)
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
        nq, nkv, hd = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim, spec.head_dim
        t = input_ids.shape[0]
        heads = spec.num_heads + spec.num_kv_heads
        for li, layer in enumerate(self.layers):
            x = _rms_norm(h, layer["attn_norm"], spec.rms_eps)
            qkv = lin(li, "qkv", x)
            qk = rope(qkv[:, :nq + nkv].view(t, heads, hd), cos, sin)  # q and k in one pass
            kv_new = torch.cat([qk[:, spec.num_heads:], qkv[:, nq + nkv:].view(t, spec.num_kv_heads, hd)], dim=1)
            h = h + lin(li, "o", self._attention(qk[:, :spec.num_heads], kv_new, li, kv, batch))
            x = _rms_norm(h, layer["mlp_norm"], spec.rms_eps)
            gate, up = lin(li, "gate_up", x).chunk(2, dim=-1)
            h = h + lin(li, "down", F.silu(gate) * up)
        return _rms_norm(h, self.norm, spec.rms_eps)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Only the rows the decoder needs; fp32 so softmax and thresholds never see bf16 rounding."""
        return self.lm_head(hidden).float()
