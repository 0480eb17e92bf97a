"""Random-weight models with real models' shapes, made on the device they run on (no file): what the
engine benchmarks use where the shapes, not the answers, decide the cost."""
from __future__ import annotations

import torch

from d2f.engine.models.decoder import Decoder
from d2f.engine.models.quant_load import quantize_weights
from d2f.engine.models.spec import ModelSpec


def smollm2_spec(mask_id: int = 16) -> ModelSpec:
    """SmolLM2-135M, served as a D2F model (shifted logits, causal prompt)."""
    return ModelSpec(family="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                     head_dim=64, intermediate_size=1536, rms_eps=1e-5, rope_theta=100000.0, max_positions=2048,
                     tie_embeddings=True, shift_logits=True, prompt_causal=True, mask_token_id=mask_id,
                     eos_token_ids=[], train_block_size=1, block_size=8)


def qwen7b_spec() -> ModelSpec:
    """Dream-7B, which has Qwen2.5-7B's dimensions: bidirectional prompt, q/k/v bias, untied 152k head."""
    return ModelSpec(family="dream", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
                     num_kv_heads=4, head_dim=128, intermediate_size=18944, rms_eps=1e-6, rope_theta=1e6,
                     max_positions=32768, qkv_bias=True, tie_embeddings=False, shift_logits=True,
                     prompt_causal=False, mask_token_id=151666, eos_token_ids=[], train_block_size=1, block_size=8)


def tiny_spec() -> ModelSpec:
    """Two small layers in SmolLM2's layout: the shape the benchmarks' own tests run in seconds on CPU."""
    return ModelSpec(family="llama", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=16, intermediate_size=128, rms_eps=1e-5, rope_theta=10000.0, max_positions=2048,
                     tie_embeddings=True, shift_logits=True, prompt_causal=True, mask_token_id=16,
                     eos_token_ids=[], train_block_size=1, block_size=8)


SHAPES = {"smollm2": smollm2_spec, "7b": qwen7b_spec, "tiny": tiny_spec}


def random_model(spec: ModelSpec, dtype=torch.bfloat16, device="cpu", seed: int = 0,
                 quantization: str = "none") -> tuple[ModelSpec, Decoder]:
    """N(0, 0.05) matrices and unit norms, drawn on `device` (a 7B model never crosses the host) and cast to
    dtype one tensor at a time."""
    g = torch.Generator(device=device).manual_seed(seed)
    h = spec.hidden_size

    def normal(*shape, std=0.05):
        return (torch.randn(shape, generator=g, device=device) * std).to(dtype)

    def ones(n):
        return torch.ones(n, dtype=dtype, device=device)

    w = {"embed": normal(spec.vocab_size, h), "norm": ones(h)}
    if not spec.tie_embeddings:
        w["lm_head"] = normal(spec.vocab_size, h)
    for li in range(spec.num_layers):
        p = f"layers.{li}."
        for name, shape in spec.projection_shapes().items():
            w[p + name] = normal(*shape)
        if spec.qkv_bias:
            for name in "qkv":
                w[p + name + "_bias"] = normal(spec.projection_shape(name)[0], std=0.1)
        w[p + "attn_norm"] = ones(h)
        w[p + "mlp_norm"] = ones(h)
    quantize_weights(w, spec, quantization, model_dir=None, merged_lora=False)
    return spec, Decoder(spec, w)
