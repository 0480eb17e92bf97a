"""The adapter of an AR-preserving D2F model: low-rank deltas that act only at mask positions.

`mask_adapter.safetensors` beside the weights holds, per layer and projection (q k v o gate up down),
`layers.{i}.{name}.lora_A` [r, in] and `.lora_B` [out, r] with the LoRA scale already folded into B,
and optionally `mask_embed` [hidden], the input vector of a mask position. Clean positions never see
any of it, so the base model's weights stay untouched and its AR logits stay exact.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .families import CheckpointError
from .layer import FUSED
from .linear import Linear
from .spec import ModelSpec

FILE = "mask_adapter.safetensors"


class MaskAdapter:
    """Per layer and fused matmul: (A, B) as two Linears, so the delta is B(A(x)) for mask rows only."""

    def __init__(self, spec: ModelSpec, tensors: dict[str, torch.Tensor], dtype: torch.dtype, device: str,
                 source: str = FILE):
        self.mask_embed = None
        if "mask_embed" in tensors:
            emb = tensors.pop("mask_embed")
            if tuple(emb.shape) != (spec.hidden_size,):
                raise CheckpointError(f"{source}: mask_embed has shape {tuple(emb.shape)}, "
                                      f"expected ({spec.hidden_size},)")
            self.mask_embed = emb.to(dtype=dtype, device=device)
        self.layers: list[dict[str, tuple[Linear, Linear]]] = []
        for li in range(spec.num_layers):
            fused = {}
            for fname, parts in FUSED.items():
                pairs = [(p, tensors.pop(f"layers.{li}.{p}.lora_A", None), tensors.pop(f"layers.{li}.{p}.lora_B", None))
                         for p in parts]
                if all(a is None and b is None for _, a, b in pairs):
                    continue
                a_rows, b_blocks, rank_total = [], [], 0
                for p, a, b in pairs:
                    out_f, in_f = spec.projection_shape(p)
                    if (a is None) != (b is None):
                        raise CheckpointError(f"{source}: layers.{li}.{p} lacks lora_A or lora_B")
                    if a is None:
                        a, b = torch.zeros(0, in_f), torch.zeros(out_f, 0)
                    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != in_f or b.shape[0] != out_f \
                            or a.shape[0] != b.shape[1]:
                        raise CheckpointError(f"{source}: layers.{li}.{p}: lora_A {tuple(a.shape)} / lora_B "
                                              f"{tuple(b.shape)} do not fit a [{out_f}, {in_f}] projection")
                    a_rows.append(a.float())
                    b_blocks.append(b.float())
                    rank_total += a.shape[0]
                big_a = torch.cat(a_rows)
                big_b = torch.zeros(sum(b.shape[0] for b in b_blocks), rank_total)
                r0 = o0 = 0
                for b in b_blocks:  # block-diagonal: each projection's B reads only its own A rows
                    big_b[o0:o0 + b.shape[0], r0:r0 + b.shape[1]] = b
                    o0, r0 = o0 + b.shape[0], r0 + b.shape[1]
                fused[fname] = (Linear(big_a.to(dtype=dtype, device=device).contiguous()),
                                Linear(big_b.to(dtype=dtype, device=device).contiguous()))
            self.layers.append(fused)
        if tensors:
            raise CheckpointError(f"{source}: unexpected tensors, e.g. {sorted(tensors)[0]!r}")

    def delta(self, li: int, fname: str, x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pair = self.layers[li].get(fname)
        if pair is None:
            return y
        a, b = pair
        return y.index_add_(0, rows, b(a(x.index_select(0, rows))))


def load_mask_adapter(model_dir, spec: ModelSpec, dtype: torch.dtype, device: str) -> MaskAdapter | None:
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return MaskAdapter(spec, tensors, dtype, device, source=str(path))
