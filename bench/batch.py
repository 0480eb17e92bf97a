"""`d2f bench engine|batch`: engine benchmarks on SmolLM2-135M shapes; they print JSON, never assert speed."""
from __future__ import annotations

import statistics
import time

import torch

from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.models.decoder import Decoder
from d2f.engine.models.spec import ModelSpec
from d2f.engine.params import DecodeParams


def smollm2_shaped(mask_id: int = 16, seed: int = 0, dtype=torch.bfloat16) -> tuple[ModelSpec, Decoder]:
    """Random weights with SmolLM2-135M's shapes, served as a D2F model (shifted logits, causal prompt)."""
    spec = ModelSpec(family="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                     head_dim=64, intermediate_size=1536, rms_eps=1e-5, rope_theta=100000.0, max_positions=2048,
                     tie_embeddings=True, shift_logits=True, prompt_causal=True, mask_token_id=mask_id,
                     eos_token_ids=[], train_block_size=1, block_size=8)
    g = torch.Generator().manual_seed(seed)
    h, i, d = spec.hidden_size, spec.intermediate_size, spec.head_dim
    w = {"embed": torch.randn(spec.vocab_size, h, generator=g) * 0.05, "norm": torch.ones(h)}
    for li in range(spec.num_layers):
        p = f"layers.{li}."
        shapes = {"q": (spec.num_heads * d, h), "k": (spec.num_kv_heads * d, h), "v": (spec.num_kv_heads * d, h),
                  "o": (h, spec.num_heads * d), "gate": (i, h), "up": (i, h), "down": (h, i)}
        for name, shape in shapes.items():
            w[p + name] = torch.randn(shape, generator=g) * 0.05
        w[p + "attn_norm"] = torch.ones(h)
        w[p + "mlp_norm"] = torch.ones(h)
    return spec, Decoder(spec, {k: v.to(dtype) for k, v in w.items()})


def _dtype(args) -> torch.dtype:
    return EngineConfig(model="-", dtype=args.dtype).torch_dtype


def _engine(model, dtype: str, **kw) -> Engine:
    return Engine(EngineConfig(model="<random smollm2 shapes>", dtype=dtype, kv_cache_memory=1 << 30, **kw),
                  model=model)


def _prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (n,), generator=g).tolist()


def _timed_run(engine: Engine, prompts: list[list[int]], params: DecodeParams) -> dict:
    for i, prompt in enumerate(prompts):
        engine.add_request(f"b{i}", prompt, params)
    fwd = total = 0.0
    steps = 0
    latency, tokens, forwards = {}, 0, []
    t0 = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                latency[out.request_id] = time.perf_counter() - t0
                tokens += len(out.token_ids)
                forwards.append(out.num_forwards)
        fwd += engine.stats.forward_seconds
        total += engine.stats.step_seconds
        steps += 1
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "forwards_per_token": round(sum(forwards) / max(tokens, 1), 3), "steps": steps,
            "forward_share": round(fwd / total, 3), "non_forward_share": round(1 - fwd / total, 3),
            "ms_per_step": round(1000 * total / steps, 2),
            "latency_p50_s": round(statistics.median(latency.values()), 3),
            "latency_max_s": round(max(latency.values()), 3)}


def bench_engine(args) -> dict:
    """Single sequence: D2F at three tau_conf points and block size 1 (AR)."""
    spec, model = smollm2_shaped(dtype=_dtype(args))
    engine = _engine((spec, model), args.dtype)
    prompt = _prompt(args.prompt_len)
    engine.generate([prompt], DecodeParams(max_tokens=16, block_size=8, ignore_eos=True))  # warm-up
    settings = {"ar_block1": DecodeParams(max_tokens=args.max_tokens, block_size=1, ignore_eos=True)}
    block = args.block_size or 8
    for tau in (0.95, 0.9, 0.7):
        settings[f"d2f_b{block}_tau{tau}"] = DecodeParams(
            max_tokens=args.max_tokens, block_size=block, tau_conf=tau, tau_act=tau, ignore_eos=True)
    results = {name: _timed_run(engine, [prompt], p) for name, p in settings.items()}
    return {"benchmark": "engine", "device": "cpu", "dtype": str(_dtype(args)).removeprefix("torch."), "threads": torch.get_num_threads(),
            "model": "SmolLM2-135M shapes, random weights", "prompt_tokens": args.prompt_len,
            "max_tokens": args.max_tokens, "results": results}


def bench_batch(args) -> dict:
    """Aggregate throughput and per-request latency at several concurrencies, same knobs for all."""
    spec, model = smollm2_shaped(dtype=_dtype(args))
    engine = _engine((spec, model), args.dtype, max_num_seqs=128, max_num_batched_tokens=8192)
    block = args.block_size or 8
    params = DecodeParams(max_tokens=args.max_tokens, block_size=block, ignore_eos=True)
    engine.generate([_prompt(args.prompt_len)], DecodeParams(max_tokens=8, block_size=block,
                                                             ignore_eos=True))
    results = {}
    for conc in args.concurrency:
        prompts = [_prompt(args.prompt_len, seed=i) for i in range(conc)]
        results[str(conc)] = _timed_run(engine, prompts, params)
    base = results[str(args.concurrency[0])]["tokens_per_s"]
    for r in results.values():
        r["speedup_vs_first"] = round(r["tokens_per_s"] / base, 2)
    return {"benchmark": "batch", "device": "cpu", "dtype": str(_dtype(args)).removeprefix("torch."), "threads": torch.get_num_threads(),
            "model": "SmolLM2-135M shapes, random weights", "block_size": block,
            "prompt_tokens": args.prompt_len, "max_tokens": args.max_tokens, "results": results}
