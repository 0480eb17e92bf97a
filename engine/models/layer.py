"""The transformer layer body, written once: the engine's decoder, the AR-preserving trainer and the
torch.compile bench all run it, each with its own way to attend and to apply a projection.

RMSNorm -> fused q|k|v -> RoPE -> attention -> o -> residual -> RMSNorm -> gate|up -> SiLU*up -> down
-> residual. Tokens are packed rows [T, hidden]; how rows group into sequences is the attend callback's
business.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .spec import ModelSpec

# The layer's fused matmuls and the checkpoint projections each one stacks (one matmul for q|k|v, one
# for gate|up).
FUSED = {"qkv": ("q", "k", "v"), "o": ("o",), "gate_up": ("gate", "up"), "down": ("down",)}
# attend(li, q [T, heads, hd], k [T, kv_heads, hd] after RoPE, v [T, kv_heads, hd]) -> [T, heads * hd]
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# linear(li, name, x) -> x projected by layer li's fused matmul name: qkv, o, gate_up or down
Project = Callable[[int, str, torch.Tensor], torch.Tensor]


def fused_weights(spec: ModelSpec, weights: dict[str, torch.Tensor], li: int
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of layer li's fused matmuls; the per-projection tensors are popped from weights so a
    model is held once."""
    p = f"layers.{li}."
    out = {}
    for fname, parts in FUSED.items():
        ws = [weights.pop(p + name) for name in parts]
        bias = None
        if fname == "qkv" and spec.qkv_bias:
            bias = torch.cat([weights[p + name + "_bias"] for name in parts])
        if len(ws) == 1:
            out[fname] = (ws[0], bias)
        else:  # a quantized matrix (Int8Weights / Int4Weights) stacks by its own rule
            out[fname] = (torch.cat(ws) if isinstance(ws[0], torch.Tensor) else type(ws[0]).cat(ws), bias)
    return out


def rope_tables(spec: ModelSpec, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_positions, head_dim] in rope()'s full-width form (cos|cos and -sin|sin), computed in
    fp64 and kept in fp32 whatever the model dtype (LLaDA computes RoPE in fp32)."""
    half = spec.head_dim // 2
    inv_freq = 1.0 / (spec.rope_theta ** (torch.arange(0, half, dtype=torch.float64) / half))
    angles = torch.arange(spec.max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().float(), angles.sin().float()
    return torch.cat([cos, cos], -1).to(device), torch.cat([-sin, sin], -1).to(device)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the two halves (x1, x2) of the last dimension, in fp32: x1*cos - x2*sin | x2*cos + x1*sin,
    written as x*cos + swap(x)*sin with full-width tables so a layer makes 6 ops instead of 11 (the same
    bits: negating sin is exact)."""
    xf = x.float()
    return (xf * cos + xf.roll(x.shape[-1] // 2, -1) * sin).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)  # one fused op
    # Half precision: normalise in fp32, scale after casting back, as the reference models do.
    return weight * F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype)


def layer_forward(spec: ModelSpec, li: int, attn_norm: torch.Tensor, mlp_norm: torch.Tensor, h: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor, attend: Attend, linear: Project) -> torch.Tensor:
    """Layer li on packed hidden states h [T, hidden]; cos, sin [T, 1, head_dim] (rope_tables) at each row's position."""
    t, hd = h.shape[0], spec.head_dim
    heads = spec.num_heads + spec.num_kv_heads
    x = rms_norm(h, attn_norm, spec.rms_eps)
    qkv = linear(li, "qkv", x)
    qk = rope(qkv[:, :heads * hd].view(t, heads, hd), cos, sin)  # q and k in one pass
    v = qkv[:, heads * hd:].view(t, spec.num_kv_heads, hd)
    h = h + linear(li, "o", attend(li, qk[:, :spec.num_heads], qk[:, spec.num_heads:], v))
    x = rms_norm(h, mlp_norm, spec.rms_eps)
    gate, up = linear(li, "gate_up", x).chunk(2, dim=-1)
    return h + linear(li, "down", F.silu(gate) * up)
