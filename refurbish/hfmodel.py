"""Family checkpoints <-> trainable transformers modules.

The engine's Decoder is inference-only, so training runs on transformers' Llama (no qkv bias: LLaDA, Llama)
or Qwen2 (qkv bias: Dream, Qwen2) classes. Tensor names go family name -> engine internal name -> HF name
through the engine's own `source_names`, so a checkpoint we write reads back through the engine unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from d2f.engine.models.checkpoint import load_weights, read_spec
from d2f.engine.models.families import source_names
from d2f.engine.models.spec import ModelSpec
from d2f.engine.tokenizer import TOKENIZER_FILES

EXTRA_TOKENIZER_FILES = ("special_tokens_map.json", "merges.txt", "added_tokens.json", "chat_template.jinja",
                         "generation_config.json")


def hf_family(spec: ModelSpec) -> str:
    return "qwen2" if spec.qkv_bias else "llama"


def hf_names(spec: ModelSpec) -> dict[str, str]:
    """Internal name -> name in the transformers module's state dict."""
    return source_names(dataclasses.replace(spec, family=hf_family(spec)))


def hf_config(spec: ModelSpec):
    kw = dict(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
              num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
              num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim, rms_norm_eps=spec.rms_eps,
              rope_theta=spec.rope_theta, max_position_embeddings=spec.max_positions,
              tie_word_embeddings=spec.tie_embeddings, attention_dropout=0.0)
    # sdpa takes our 4D boolean block-causal masks as they are.
    if spec.qkv_bias:
        return Qwen2Config(**kw, attn_implementation="sdpa")
    return LlamaConfig(**kw, attention_bias=False, mlp_bias=False, attn_implementation="sdpa")


def load_hf(model_dir, dtype: torch.dtype = torch.float32):
    """(spec, raw config dict, transformers module) for any supported family's checkpoint."""
    spec, raw = read_spec(model_dir)
    weights = load_weights(model_dir, spec, dtype, "cpu")
    cls = Qwen2ForCausalLM if spec.qkv_bias else LlamaForCausalLM
    with torch.device("meta"):
        model = cls(hf_config(spec))
    names = hf_names(spec)
    state = {names[k]: v for k, v in weights.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if spec.tie_embeddings:
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{model_dir}: no weights for {missing[:3]}")
    # Buffers (RoPE inv_freq) were created on meta: rebuild them on CPU.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    return spec, raw, model.to(dtype)


def family_state(state: dict[str, torch.Tensor], spec: ModelSpec) -> dict[str, torch.Tensor]:
    """transformers-named weights under the family's released tensor names (what the engine loads)."""
    ours = hf_names(spec)
    theirs = source_names(spec)
    return {theirs[k]: state[ours[k]].detach().contiguous().clone() for k in theirs}


def lora_module_names(spec: ModelSpec) -> dict[str, str]:
    """HF module path of each attention projection -> the family's module path (for PEFT adapters)."""
    ours, theirs = hf_names(spec), source_names(spec)
    out = {}
    for i in range(spec.num_layers):
        for x in "qkvo":
            key = f"layers.{i}.{x}"
            out[ours[key].removesuffix(".weight")] = theirs[key].removesuffix(".weight")
    return out


def family_target_modules(spec: ModelSpec) -> list[str]:
    return ["q_proj", "k_proj", "v_proj", "attn_out" if spec.family == "llada" else "o_proj"]


def save_checkpoint(out: Path, hf_state: dict, spec: ModelSpec, raw_config: dict, d2f: dict, dtype: torch.dtype) -> None:
    """config.json (the teacher's own, plus our "d2f" section and any vocabulary growth) + model.safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(raw_config)
    cfg["d2f"] = {**(cfg.get("d2f") or {}), **d2f}
    size_key = "embedding_size" if spec.family == "llada" else "vocab_size"
    cfg[size_key] = spec.vocab_size
    if spec.family == "llada":
        cfg["vocab_size"] = max(int(cfg.get("vocab_size", 0)), spec.vocab_size)
    state = {k: v.to(dtype) for k, v in family_state(hf_state, spec).items()}
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")  # a crash mid-save never leaves a half-written checkpoint
    (out / "config.json").write_text(json.dumps(cfg, indent=1))


def copy_tokenizer(src, dst: Path) -> None:
    for name in TOKENIZER_FILES + EXTRA_TOKENIZER_FILES:
        f = Path(src) / name
        if f.is_file():
            shutil.copy2(f, dst / name)
