"""`d2f bench speed`: one run measures the GEMV floor, our forward per window size, single-stream
decode as AR and at each D2F preset, and llama.cpp on the same GGUF when llama-cpp-python is importable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from d2f.engine import llama_cpp
from d2f.engine.cli_args import MODEL_FIELDS, add_dataclass_arguments, engine_config, from_args
from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.models.linear import onednn_supported
from d2f.engine.params import SPEED_PRESETS, DecodeParams, speed_to_taus
from d2f.engine.runner import Work
from d2f.engine.timing import device_sync, fastest_generate, median_ms, rss_mb

PROMPT = "Explain in a few sentences why the sky is blue, then give one everyday example."

# Exact mode's points, name -> (block size, draft width): block sizes 2 and 3, and block 2 with 2-4 candidates
# for the first draft.
EXACT_POINTS = {"exact/2": (2, 1), "exact/3": (3, 1), "exact/2/2": (2, 2), "exact/2/3": (2, 3),
                "exact/2/4": (2, 4)}


@dataclass
class SpeedConfig:
    engine: EngineConfig
    max_tokens: int = field(default=64, metadata={"help": "tokens generated per decode"})
    cache_len: int = field(default=300, metadata={"help": "cached prefix tokens under the timed forwards"})
    gguf: str | None = field(default=None, metadata={
        "help": "GGUF of the same model for the llama.cpp comparison (default: the embedded model's own "
                "for smollm2 / smollm2-d2f)"})


def add_arguments(p) -> None:
    add_dataclass_arguments(p, EngineConfig, include=MODEL_FIELDS)
    add_dataclass_arguments(p, SpeedConfig)


def config(args) -> SpeedConfig:
    from d2f.engine.models.registry import AR_DEFAULT, D2F_DEFAULT

    gguf = args.gguf
    if gguf is None and args.model in (None, AR_DEFAULT, D2F_DEFAULT):  # the embedded model: its own GGUF
        from d2f.engine.models.default_model import gguf_path

        gguf = str(gguf_path())
    return from_args(SpeedConfig, args, engine=engine_config(args, kv_cache_memory=1 << 30), gguf=gguf)


def gemv_floor_ms(engine: Engine, repeat: int = 7) -> float:
    """A one-row input through every weight matrix once, with the kernels the engine uses."""
    model = engine.model
    h = model.spec.hidden_size
    x = torch.randn(1, h, dtype=model.dtype, device=model.device)
    x_mlp = torch.randn(1, model.spec.intermediate_size, dtype=model.dtype, device=model.device)
    x_attn = torch.randn(1, model.spec.num_heads * model.spec.head_dim, dtype=model.dtype, device=model.device)

    def run():
        for layer in model.layers:
            layer["qkv"](x)
            layer["o"](x_attn)
            layer["gate_up"](x)
            layer["down"](x_mlp)
        model.lm_head(x)
    return median_ms(run, repeat, device_sync(model.device))


def cached_windows(engine: Engine, cache_len: int, windows: list[int]):
    """Yields (size, Work): a window of that many masks over a cache_len-token prefix already in the KV cache."""
    spec = engine.spec
    mask_id = spec.mask_token_id if spec.is_d2f else 0
    engine.add_request("fwd", list(range(10, 10 + cache_len)), DecodeParams(max_tokens=max(windows),
                                                                            block_size=1, ignore_eos=True))
    seq = engine.requests["fwd"]
    try:
        while seq.cached_len < cache_len:  # prefill the prefix through the real scheduler
            engine.step()
        for w in windows:
            del seq.tokens[cache_len:], seq.is_masked[cache_len:]
            seq.tokens.extend([mask_id] * w)
            seq.is_masked.extend([True] * w)
            engine.pool.grow(seq.pages, cache_len + w)
            yield w, Work(seq, cache_len, cache_len + w, cache_len, list(range(cache_len, cache_len + w)))
    finally:
        engine.abort("fwd")


def forward_ms(engine: Engine, cache_len: int, windows: list[int], repeat: int = 5) -> dict[str, float]:
    """Our forward (model + logits for every window position) over a window with a cached prefix."""
    sync = device_sync(engine.model.device)
    return {str(w): median_ms(lambda: engine.runner.run([work]), repeat, sync)
            for w, work in cached_windows(engine, cache_len, windows)}


def decode_tok_s(engine: Engine, prompt: list[int], params: DecodeParams, runs: int = 2) -> dict:
    best = fastest_generate(engine, [prompt], params, runs)
    return {"tok_s": round(best.tokens_per_second, 2), "tokens": best.tokens, "forwards": best.forwards,
            "tokens_per_forward": round(best.tokens / max(best.forwards, 1), 3)}


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")


def cpu_isa() -> list[str]:
    """The instruction-set extensions that decide which kernels are fast here (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [isa for isa in ISA_FLAGS if isa in flags]


def run(cfg: SpeedConfig) -> dict:
    from d2f.engine.tokenizer import load_tokenizer

    model_dir = cfg.engine.model
    engine = Engine(cfg.engine)
    tok = load_tokenizer(model_dir)
    if tok is not None and tok.chat_template:
        prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
    else:
        prompt = tok.encode(PROMPT) if tok is not None else list(range(10, 52))
    prompt = list(prompt)
    threads = torch.get_num_threads()
    result = {"benchmark": "speed", "model": model_dir, "device": cfg.engine.device,
              "dtype": str(engine.model.dtype).removeprefix("torch."), "threads": threads,
              "prompt_tokens": len(prompt), "max_tokens": cfg.max_tokens,
              # bf16 is only fast where oneDNN runs it natively (AVX512-BF16/AMX); elsewhere it is emulated
              "native_bf16": onednn_supported(torch.bfloat16, "cpu"), "isa": cpu_isa(),
              "quantization": engine.model.quantization, "kv_cache_mb": cfg.engine.kv_budget_bytes() >> 20,
              "rss_mb_after_load": rss_mb()}
    result["gemv_floor_ms"] = gemv_floor_ms(engine)
    result["fwd_ms"] = forward_ms(engine, cfg.cache_len, [1, 4, 8, 16, 32])
    if engine.model.adapter is not None:  # what the mask-row work of an AR-preserving model's adapter costs
        engine.model.adapter.active = False
        result["fwd_ms_without_adapter"] = forward_ms(engine, cfg.cache_len, [1, 4, 8, 16, 32])
        engine.model.adapter.active = True
    ar = DecodeParams(max_tokens=cfg.max_tokens, block_size=1)
    result["ar_tok_s"] = decode_tok_s(engine, prompt, ar)
    if engine.spec.is_d2f:
        result["d2f_tok_s"] = {}
        for name, speed in SPEED_PRESETS.items():
            conf, act = speed_to_taus(speed)
            p = DecodeParams(max_tokens=cfg.max_tokens, tau_conf=conf, tau_act=act)
            result["d2f_tok_s"][name] = decode_tok_s(engine, prompt, p)
        if engine.spec.ar_preserving:  # exact mode: AR's own answer, drafted and verified
            for name, (block, width) in EXACT_POINTS.items():
                p = DecodeParams(max_tokens=cfg.max_tokens, exact=True, block_size=block, draft_width=width)
                result["d2f_tok_s"][name] = decode_tok_s(engine, prompt, p)
    else:
        result["d2f_tok_s"] = None
    result["llama_cpp_tok_s"] = llama_cpp.tok_s(cfg.gguf, [prompt], cfg.max_tokens, threads) if cfg.gguf else None
    fwd = result["fwd_ms"]
    result["ratios"] = {
        "fwd1_over_floor": round(fwd["1"] / result["gemv_floor_ms"], 2),
        "fwd4_over_fwd1": round(fwd["4"] / fwd["1"], 2),
        "fwd16_over_fwd1": round(fwd["16"] / fwd["1"], 2),
    }
    result["rss_mb"] = rss_mb()
    lc = result["llama_cpp_tok_s"]
    if lc and "tok_s" in lc:  # a failed llama.cpp child reports {"error": ...}
        result["ratios"]["ar_over_llama_cpp"] = round(result["ar_tok_s"]["tok_s"] / lc["tok_s"], 2)
        if result["d2f_tok_s"]:
            bal = result["d2f_tok_s"]["balanced"]["tok_s"]
            result["ratios"]["d2f_balanced_over_llama_cpp"] = round(bal / lc["tok_s"], 2)
            for name in EXACT_POINTS:
                if name in result["d2f_tok_s"]:
                    result["ratios"][f"{name}_over_llama_cpp"] = round(
                        result["d2f_tok_s"][name]["tok_s"] / lc["tok_s"], 2)
    return result
