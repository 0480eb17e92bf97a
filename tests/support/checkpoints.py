"""Tiny random checkpoints written to disk in each family's released format.

Weights come from transformers' own Llama/Qwen2 classes, so the same tensors can be loaded back
into transformers as the independent reference implementation.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 96
MASK_ID = 95
EOS_ID = 2


def _common(seed: int, layers: int, tie: bool, vocab: int = VOCAB) -> dict:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie,
                eos_token_id=EOS_ID, bos_token_id=1, pad_token_id=0)


def _sharpen(model: torch.nn.Module, seed: int) -> None:
    """Random init gives near-uniform logits; larger weights make confidences spread over (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.35 if "embed" in name or "lm_head" in name else 0.12))
            elif "bias" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def hf_llama(seed: int = 0, layers: int = 2, tie: bool = False, vocab: int = VOCAB) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_common(seed, layers, tie, vocab))).eval()
    _sharpen(model, seed)
    return model


def hf_qwen2(seed: int = 0, layers: int = 2, tie: bool = False) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**_common(seed, layers, tie))).eval()
    _sharpen(model, seed)
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _write(out: Path, cfg: dict, state: dict[str, torch.Tensor], shards: int = 1) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    if shards == 1:
        save_file(state, str(out / "model.safetensors"))
        return out
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[i::shards]}
        save_file(part, str(out / fname))
        weight_map.update({n: fname for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def write_llama(out: Path, model: LlamaForCausalLM, mask_id: int | None = None, d2f: dict | None = None,
                shards: int = 1) -> Path:
    cfg = model.config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    if mask_id is not None:
        cfg["mask_token_id"] = mask_id
    if d2f:
        cfg["d2f"] = d2f
    return _write(out, cfg, _state(model), shards)


def write_qwen2(out: Path, model: Qwen2ForCausalLM, shards: int = 1) -> Path:
    cfg = model.config.to_dict()
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    return _write(out, cfg, _state(model), shards)


def write_dream(out: Path, model: Qwen2ForCausalLM, block: int = 4, shards: int = 1) -> Path:
    """Dream ships Qwen2 tensor names under model_type 'Dream' with its own mask token."""
    cfg = model.config.to_dict()
    cfg.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=MASK_ID,
               d2f={"train_block_size": block})
    return _write(out, cfg, _state(model), shards)


LLADA_NAMES = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
               "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
               "mlp.down_proj": "ff_out", "input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm"}


def llada_state(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The Llama tensors renamed the way LLaDA's released checkpoints name them."""
    out = {}
    for name, t in _state(model).items():
        if name == "model.embed_tokens.weight":
            out["model.transformer.wte.weight"] = t
        elif name == "model.norm.weight":
            out["model.transformer.ln_f.weight"] = t
        elif name == "lm_head.weight":
            out["model.transformer.ff_out.weight"] = t
        else:
            _, _, idx, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            out[f"model.transformer.blocks.{idx}.{LLADA_NAMES[module]}.weight"] = t
    return out


def write_llada(out: Path, model: LlamaForCausalLM, block: int = 4, shards: int = 1) -> Path:
    c = model.config
    cfg = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": c.hidden_size,
           "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads, "n_layers": c.num_hidden_layers,
           "mlp_hidden_size": c.intermediate_size, "vocab_size": c.vocab_size, "embedding_size": c.vocab_size,
           "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_parameters["rope_theta"], "max_sequence_length": 512,
           "weight_tying": bool(c.tie_word_embeddings), "include_bias": False, "layer_norm_type": "rms",
           "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "d2f": {"train_block_size": block}}
    return _write(out, cfg, llada_state(model), shards)


def write_mask_adapter(out: Path, seed: int = 0, rank: int = 4, layers: int = 2, scale: float = 0.3) -> Path:
    """A random adapter for an AR-preserving D2F model (mask_adapter.safetensors) in the tiny shapes."""
    g = torch.Generator().manual_seed(seed)
    h, inter, d, heads, kv = 64, 96, 16, 4, 2
    shapes = {"q": (heads * d, h), "k": (kv * d, h), "v": (kv * d, h), "o": (h, heads * d),
              "gate": (inter, h), "up": (inter, h), "down": (h, inter)}
    t = {"mask_embed": torch.randn(h, generator=g) * 0.35}
    for li in range(layers):
        for name, (o, i) in shapes.items():
            t[f"layers.{li}.{name}.lora_A"] = torch.randn(rank, i, generator=g) * scale
            t[f"layers.{li}.{name}.lora_B"] = torch.randn(o, rank, generator=g) * scale
    save_file(t, str(out / "mask_adapter.safetensors"))
    return out


def write_ar_preserving_pair(root: Path, adapter_seed: int = 2, scale: float = 0.3, model_seed: int = 11):
    """(hf model, its AR checkpoint dir, the same weights as an AR-preserving D2F dir with a random adapter)."""
    hf = hf_llama(seed=model_seed)
    base = write_llama(root / "base", hf)
    arp = write_llama(root / "arp", hf, mask_id=MASK_ID, d2f={"ar_preserving": True, "block_size": 4})
    write_mask_adapter(arp, seed=adapter_seed, scale=scale)
    return hf, base, arp


def random_prompt(seed: int, n: int) -> list[int]:
    """n token ids drawn with a seed, avoiding the ids the test checkpoints reserve at both ends."""
    rng = random.Random(seed)
    return [rng.randrange(3, VOCAB - 1) for _ in range(n)]
