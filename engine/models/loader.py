"""Checkpoint directory (+ optional LoRA) -> ModelSpec and a ready Decoder."""
from __future__ import annotations

import torch

from .checkpoint import load_weights, read_spec
from .decoder import Decoder
from .mask_adapter import load_mask_adapter
from .quant_load import quantize_weights
from .spec import ModelSpec


def load_model(model_dir, dtype: torch.dtype = torch.float32, device: str = "cpu",
               lora_dir=None, quantization: str = "none") -> tuple[ModelSpec, Decoder]:
    spec, _ = read_spec(model_dir)
    weights = load_weights(model_dir, spec, dtype, device, lora_dir)
    applied = quantize_weights(weights, spec, quantization, model_dir, merged_lora=lora_dir is not None)
    adapter = load_mask_adapter(model_dir, spec, dtype, device) if spec.ar_preserving else None
    model = Decoder(spec, weights, adapter)
    model.quantization = applied
    return spec, model
