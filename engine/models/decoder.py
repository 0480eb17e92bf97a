"""The engine's decoder: the shared layer body (layer.py) with GQA attention over a paged KV cache and the
prepacked Linears, plus the mask adapter's deltas on AR-preserving models.

Tokens of all sequences in a step are packed into one [T, hidden] tensor (no padding between
sequences) for every matmul; only attention regroups them per sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attention import attention, decode_attention
from .layer import FUSED, fused_weights, layer_forward, rms_norm, rope_tables
from .linear import Linear, onednn_supported
from .mask_adapter import MaskAdapter
from .quant import quantized_linear
from .spec import ModelSpec


@dataclass(slots=True)
class SeqWindow:
    """One sequence's part of the packed step, as attention sees it: exactly the shapes it has alone."""
    rows: int                  # its packed rows start at the sum of the earlier windows' rows
    # KV slots of every key it attends over (cached prefix + this window): [Lk] indices, or a slice when
    # its pages are consecutive, so its keys are a view of the cache instead of a gathered copy.
    slots: torch.Tensor | slice
    # SDPA: [1, 1, rows, Lk] bool, True = may attend; None = attend to all. A decode call (place set):
    # the additive [ROWS, Lk] fp32 bias of attention.decode_attention.
    mask: torch.Tensor | None
    place: torch.Tensor | slice | None = None  # a decode call: the GEMM row of each query row
    valid: int = 0                     # a decode call: its real keys (the rest of the bucket is padding)


@dataclass(slots=True)
class AttnBatch:
    """Where each packed token goes for attention; built by the runner once per step."""
    positions: torch.Tensor     # [T] absolute position ids (padding rows: 0)
    write_slots: torch.Tensor   # [T] KV slot each token's K/V is written to (padding: the scratch slot)
    windows: list[SeqWindow]    # per sequence, in packed order; padding rows (if any) come after them all
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
    def __init__(self, spec: ModelSpec, weights: dict[str, torch.Tensor], adapter: MaskAdapter | None = None):
        super().__init__()
        self.spec = spec
        self.embed = weights["embed"]
        self.norm = weights["norm"]
        self.lm_head = Linear(weights.get("lm_head", self.embed))
        self.layers = []
        self.adapter = adapter  # MaskAdapter of an AR-preserving D2F model
        self.quantization = "none"  # what the loader applied (quant_load)
        folded = set()
        for i in range(spec.num_layers):
            layer = {"attn_norm": weights[f"layers.{i}.attn_norm"], "mlp_norm": weights[f"layers.{i}.mlp_norm"]}
            for fname, (w, bias) in fused_weights(spec, weights, i).items():
                a = None if adapter is None else adapter.fold_rows(i, fname)
                if a is not None and isinstance(w, torch.Tensor) and onednn_supported(w.dtype, w.device.type):
                    # [W; A]: the adapter's first matmul rides on the base one (mask_adapter.Entry)
                    w = torch.cat([w, a])
                    bias = None if bias is None else torch.cat([bias, bias.new_zeros(a.shape[0])])
                    folded.add((i, fname))
                layer[fname] = Linear(w, bias) if isinstance(w, torch.Tensor) else \
                    quantized_linear(w, self.embed.dtype, bias, self.embed.device)
            self.layers.append(layer)
        if adapter is not None:
            adapter.finish(folded)
        # Every row gets the same bits whatever the row count: no padding needed for batch invariance.
        self.row_invariant = self.lm_head.row_invariant and all(
            layer[name].row_invariant for layer in self.layers for name in FUSED)
        self.cos, self.sin = rope_tables(spec, self.embed.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def _attention(self, li: int, q, k, v, kv: KVCache, batch: AttnBatch) -> torch.Tensor:
        """Writes this step's K/V into the paged cache, then attends each sequence over its own keys.

        Each sequence is attended with exactly the shapes it would have alone (no padding to its
        neighbours' lengths), so its bits cannot depend on what else is in the batch: CPU SDPA's output
        changes with padded query and key lengths (by up to 1e-3 in bf16, enough to flip a token).
        """
        spec = self.spec
        layer_kv = kv.kv[li]
        layer_kv.index_copy_(0, batch.write_slots, torch.cat([k, v], dim=1))
        hd = spec.head_dim
        out, start = [], 0
        for w in batch.windows:
            keys = layer_kv[w.slots] if isinstance(w.slots, slice) else layer_kv.index_select(0, w.slots)
            queries = q[start:start + w.rows]
            if w.place is not None:
                out.append(decode_attention(queries.view(w.rows, spec.num_heads, hd), keys, w.valid, w.place,
                                            w.mask))
            else:
                out.append(attention(queries.view(1, w.rows, spec.num_heads, hd), keys[None], w.mask)
                           .reshape(w.rows, -1))
            start += w.rows
        if start < q.shape[0]:  # alignment padding rows: zeros
            out.append(q.new_zeros(q.shape[0] - start, spec.num_heads * hd))
        return out[0] if len(out) == 1 else torch.cat(out)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, batch: AttnBatch, kv: KVCache) -> torch.Tensor:
        """Packed token ids [T] -> final-normed hidden states [T, hidden]."""
        spec = self.spec
        h = F.embedding(input_ids, self.embed)
        rows = batch.adapter_rows if self.adapter is not None and batch.adapter_rows is not None \
            and batch.adapter_rows.numel() else None
        layers, adapter = self.layers, self.adapter

        scale = None if rows is None or not adapter.active else adapter.row_scale(rows, h.shape[0], h.dtype)

        def lin(li: int, name: str, x: torch.Tensor) -> torch.Tensor:
            y = layers[li][name](x)
            return y if adapter is None else adapter.apply(li, name, x, y, scale)

        if scale is not None and adapter.mask_embed is not None:
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
