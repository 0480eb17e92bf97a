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


class Entry:
    """One fused matmul's adapter: A [R, in] (its projections' rows stacked), B block-diagonal [out, R].

    Folded: A's rows were appended to the base matmul's weight (the decoder did it, oneDNN path only), so
    one matmul gives [W x | A x] and only B is left to run. Measured on the default model (AVX512-BF16,
    4-row window): each adapter matmul costs about 40 us, mostly call overhead, so the fold takes 120 of
    the 240 away; the base columns keep their bits (tests/engine/test_mask_adapter_fold.py)."""
    __slots__ = ("a_weight", "a", "b", "out", "folded")

    def __init__(self, a_weight: torch.Tensor, b: Linear, out: int):
        self.a_weight, self.a, self.b, self.out, self.folded = a_weight, None, b, out, False


class MaskAdapter:
    """Per layer and fused matmul: an Entry, so the delta is B(A(x)) on the mask rows only."""

    def __init__(self, spec: ModelSpec, tensors: dict[str, torch.Tensor], dtype: torch.dtype, device: str,
                 source: str = FILE):
        self.mask_embed = None
        self.active = True  # False: the decoder passes no row scale and runs as the base model (benchmarks)
        if "mask_embed" in tensors:
            emb = tensors.pop("mask_embed")
            if tuple(emb.shape) != (spec.hidden_size,):
                raise CheckpointError(f"{source}: mask_embed has shape {tuple(emb.shape)}, "
                                      f"expected ({spec.hidden_size},)")
            self.mask_embed = emb.to(dtype=dtype, device=device)
        self.layers: list[dict[str, Entry]] = []
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
                fused[fname] = Entry(big_a.to(dtype=dtype, device=device).contiguous(),
                                     Linear(big_b.to(dtype=dtype, device=device).contiguous()), big_b.shape[0])
            self.layers.append(fused)
        if tensors:
            raise CheckpointError(f"{source}: unexpected tensors, e.g. {sorted(tensors)[0]!r}")

    def fold_rows(self, li: int, fname: str) -> torch.Tensor | None:
        """A's rows for the decoder to append to the base weight of layer li's fname, or None."""
        entry = self.layers[li].get(fname)
        return None if entry is None else entry.a_weight

    def finish(self, folded: set[tuple[int, str]]) -> None:
        """After the decoder built its Linears: the entries it folded, and a Linear for every other A."""
        for li, layer in enumerate(self.layers):
            for fname, entry in layer.items():
                entry.folded = (li, fname) in folded
                if not entry.folded:
                    entry.a = Linear(entry.a_weight)
                entry.a_weight = None

    @staticmethod
    def row_scale(rows: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
        """[total, 1]: 1 at the mask rows, 0 elsewhere; built once per forward."""
        scale = torch.zeros(total, 1, dtype=dtype, device=rows.device)
        return scale.index_fill_(0, rows, 1)

    def apply(self, li: int, fname: str, x: torch.Tensor, y: torch.Tensor,
              scale: torch.Tensor | None) -> torch.Tensor:
        """The base output y of layer li's fname on input x -> y + B(A(x)) on the mask rows (scale 1), y
        itself on the others (y + 0: the same bits). A folded matmul's y carries A x in its last columns.

        The deltas run on every row and `scale` zeroes the clean ones: addcmul is one op where a gather,
        two Linears and a scatter were four, and every row's delta keeps the same bits in any batch (the
        Linears are row-invariant and addcmul is elementwise), so batched == alone holds for mask rows."""
        entry = self.layers[li].get(fname)
        if entry is None:
            return y
        if entry.folded:
            base = y[:, :entry.out]
            if scale is not None:
                base.addcmul_(entry.b(y[:, entry.out:]), scale)
            return base
        if scale is None:
            return y
        return y.addcmul_(entry.b(entry.a(x)), scale)


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
