"""Each family's config keys and tensor names, read into one ModelSpec and one naming scheme.

Internal parameter names (what the decoder holds): embed, norm, lm_head, and per layer
attn_norm, q, k, v (+ _bias), o, mlp_norm, gate, up, down.
"""
from __future__ import annotations

from .spec import ModelSpec

LLADA_MASK_ID = 126336
DREAM_MASK_ID = 151666


class CheckpointError(ValueError):
    """A checkpoint we cannot load; the message is one line naming the file and the problem."""


def detect_family(cfg: dict, path: str) -> str:
    model_type = str(cfg.get("model_type", "")).lower()
    archs = [str(a) for a in cfg.get("architectures") or []]
    if model_type == "llada" or any(a.startswith("LLaDA") for a in archs):
        return "llada"
    if model_type == "dream" or any(a.startswith("Dream") for a in archs):
        return "dream"
    if model_type == "llama" or "LlamaForCausalLM" in archs:
        return "llama"
    if model_type == "qwen2" or "Qwen2ForCausalLM" in archs:
        return "qwen2"
    raise CheckpointError(
        f"{path}: unsupported model_type {cfg.get('model_type')!r} / architectures {archs} "
        "(supported: llada, Dream, LlamaForCausalLM, Qwen2ForCausalLM)"
    )


def _get(cfg: dict, path: str, *keys, default=None, kind=int):
    for key in keys:
        if cfg.get(key) is not None:
            try:
                return kind(cfg[key])
            except (TypeError, ValueError):
                raise CheckpointError(f"{path}: config key {key!r} has bad value {cfg[key]!r}") from None
    if default is None:
        raise CheckpointError(f"{path}: config is missing {keys[0]!r}")
    return default


def _eos_ids(cfg: dict, fallback: list[int]) -> list[int]:
    eos = cfg.get("eos_token_id")
    if eos is None:
        return fallback
    return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]


def _rope_theta(cfg: dict, path: str) -> float:
    """transformers 4 writes rope_theta (+ rope_scaling); transformers 5 writes rope_parameters."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{path}: RoPE scaling {rope!r} is not supported yet")
    theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    try:
        return float(theta)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: config key 'rope_theta' has bad value {theta!r}") from None


def spec_from_config(cfg: dict, path: str) -> ModelSpec:
    family = detect_family(cfg, path)
    g = lambda *keys, **kw: _get(cfg, path, *keys, **kw)  # noqa: E731
    if family == "llada":
        hidden = g("d_model")
        heads = g("n_heads")
        spec = ModelSpec(
            family=family,
            vocab_size=g("embedding_size", "vocab_size"),
            hidden_size=hidden,
            num_layers=g("n_layers"),
            num_heads=heads,
            num_kv_heads=g("n_kv_heads", default=heads),
            head_dim=hidden // heads,
            intermediate_size=g("mlp_hidden_size"),
            rms_eps=g("rms_norm_eps", default=1e-5, kind=float),
            rope_theta=g("rope_theta", default=10000.0, kind=float),
            max_positions=g("max_sequence_length", default=4096),
            qkv_bias=bool(cfg.get("include_qkv_bias") or cfg.get("include_bias")),
            tie_embeddings=bool(cfg.get("weight_tying", False)),
            shift_logits=False,
            prompt_causal=False,
            mask_token_id=g("mask_token_id", default=LLADA_MASK_ID),
            eos_token_ids=_eos_ids(cfg, [126081, 126348]),
            train_block_size=16,
        )
    else:
        hidden = g("hidden_size")
        heads = g("num_attention_heads")
        is_dream = family == "dream"
        mask = cfg.get("mask_token_id", DREAM_MASK_ID if is_dream else None)
        spec = ModelSpec(
            family=family,
            vocab_size=g("vocab_size"),
            hidden_size=hidden,
            num_layers=g("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=g("num_key_value_heads", default=heads),
            head_dim=g("head_dim", default=hidden // heads),
            intermediate_size=g("intermediate_size"),
            rms_eps=g("rms_norm_eps", default=1e-6, kind=float),
            rope_theta=_rope_theta(cfg, path),
            max_positions=g("max_position_embeddings", default=4096),
            qkv_bias=family in ("dream", "qwen2") or bool(cfg.get("attention_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            shift_logits=True,
            prompt_causal=not is_dream,
            mask_token_id=None if mask is None else int(mask),
            eos_token_ids=_eos_ids(cfg, [151643] if is_dream else []),
            train_block_size=16 if is_dream else 1,
        )
    _apply_d2f_section(spec, cfg.get("d2f") or {}, path)
    if spec.hidden_size % spec.num_heads or spec.num_heads % spec.num_kv_heads:
        raise CheckpointError(f"{path}: heads ({spec.num_heads}/{spec.num_kv_heads}) do not divide evenly")
    return spec


def _apply_d2f_section(spec: ModelSpec, d2f: dict, path: str) -> None:
    """A D2F checkpoint records its mask token, training block size and recommended knobs here."""
    if not isinstance(d2f, dict):
        raise CheckpointError(f"{path}: 'd2f' must be an object")
    for key, kind in (("mask_token_id", int), ("train_block_size", int), ("block_size", int),
                      ("tau_add", float), ("tau_act", float), ("tau_conf", float), ("prompt_causal", bool),
                      ("ar_preserving", bool), ("draft_width", int)):
        if key in d2f:
            setattr(spec, key, kind(d2f[key]))
    if "block_size" not in d2f:
        spec.block_size = spec.train_block_size if spec.is_d2f else 1
    if spec.draft_width < 1:
        raise CheckpointError(f"{path}: 'draft_width' must be >= 1, got {spec.draft_width}")
    if spec.ar_preserving and not (spec.shift_logits and spec.prompt_causal and spec.is_d2f):
        raise CheckpointError(f"{path}: 'ar_preserving' needs a causal, shifted-logit model with a mask_token_id")


def source_names(spec: ModelSpec) -> dict[str, str]:
    """Internal name -> tensor name in the family's released checkpoints."""
    names: dict[str, str] = {}
    if spec.family == "llada":
        t = "model.transformer."
        names["embed"] = t + "wte.weight"
        names["norm"] = t + "ln_f.weight"
        if not spec.tie_embeddings:
            names["lm_head"] = t + "ff_out.weight"
        per_layer = {"attn_norm": "attn_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
                     "mlp_norm": "ff_norm", "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}
        for i in range(spec.num_layers):
            for ours, theirs in per_layer.items():
                names[f"layers.{i}.{ours}"] = f"{t}blocks.{i}.{theirs}.weight"
            if spec.qkv_bias:
                for x in "qkv":
                    names[f"layers.{i}.{x}_bias"] = f"{t}blocks.{i}.{x}_proj.bias"
        return names
    names["embed"] = "model.embed_tokens.weight"
    names["norm"] = "model.norm.weight"
    if not spec.tie_embeddings:
        names["lm_head"] = "lm_head.weight"
    per_layer = {"attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
                 "v": "self_attn.v_proj", "o": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
                 "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for i in range(spec.num_layers):
        for ours, theirs in per_layer.items():
            names[f"layers.{i}.{ours}"] = f"model.layers.{i}.{theirs}.weight"
        if spec.qkv_bias:
            for x in "qkv":
                names[f"layers.{i}.{x}_bias"] = f"model.layers.{i}.self_attn.{x}_proj.bias"
    return names
