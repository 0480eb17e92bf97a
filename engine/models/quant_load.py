"""`--quantization int8|int4` at load: every projection of every layer becomes a weight-only quantized
matrix, after any LoRA is merged. A checkpoint that carries its own 4-bit blocks (the embedded model's
Q4_1, saved by default_model.py) is served from them as they are: no second rounding of q.

The head (lm_head, or the tied embedding) stays in the model dtype: the embedded model's is GGUF Q8_0,
which neither torch kernel holds exactly, and a 4-bit head costs agreement with the unquantized model
for a gain the embedding lookup would not share (it needs the float table anyway).
"""
from __future__ import annotations

import logging
from pathlib import Path

from .quant import Int4Weights, quantize
from .spec import ModelSpec

log = logging.getLogger("d2f.engine")

MODES = ("none", "int8", "int4")
GROUP_SIZE = 32  # GGUF's Q4_1/Q4_0 block; every hidden and intermediate size we serve is a multiple of it
BLOCKS_FILE = "model.q4_1.safetensors"  # per HF weight name: .q4 (uint8 [out, in/2]), .scale, .min (fp16)


def save_blocks(blocks: dict[str, Int4Weights], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, w in blocks.items():
        tensors[name + ".q4"], tensors[name + ".scale"], tensors[name + ".min"] = w.q4, w.scale, w.min
    save_file(tensors, str(path), metadata={"format": "q4_1", "group_size": str(GROUP_SIZE)})


def _load_blocks(path: Path, names: dict[str, str]) -> dict[str, Int4Weights]:
    from safetensors.torch import load_file

    t = load_file(str(path))
    return {ours: Int4Weights(t[theirs + ".q4"], t[theirs + ".scale"], t[theirs + ".min"], GROUP_SIZE)
            for ours, theirs in names.items() if theirs + ".q4" in t}


def quantize_weights(weights: dict, spec: ModelSpec, mode: str, model_dir, merged_lora: bool) -> str:
    """Replace each layer projection in `weights` (internal names) by Int8Weights / Int4Weights in place;
    returns the mode applied."""
    if mode not in MODES:
        raise ValueError(f"quantization must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none":
        return mode
    from .families import source_names

    names = [f"layers.{i}.{p}" for i in range(spec.num_layers) for p in spec.projection_shapes()]
    src = source_names(spec)
    blocks = {}
    path = Path(model_dir) / BLOCKS_FILE if model_dir else None
    if mode == "int4" and not merged_lora and path is not None and path.is_file():
        blocks = _load_blocks(path, {ours: src[ours] for ours in names})
    for name in names:
        weights[name] = blocks[name] if name in blocks else quantize(weights[name].float(), mode, GROUP_SIZE)
    how = "weight-only int8, one scale per output channel" if mode == "int8" else \
        f"weight-only int4, group size {GROUP_SIZE}, " + (
            f"{len(blocks)} of {len(names)} matrices from the checkpoint's own Q4_1 blocks"
            if blocks else "round-to-nearest at load")
    log.info("quantization: %s; head and embedding in %s", how, str(weights["embed"].dtype).removeprefix("torch."))
    return mode
