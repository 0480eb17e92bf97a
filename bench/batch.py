"""`d2f bench engine|batch`: engine benchmarks on SmolLM2-135M shapes; they print JSON, never assert speed."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from d2f.bench.shapes import random_model, smollm2_spec
from d2f.engine.cli_args import add_dataclass_arguments, from_args
from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.params import DecodeParams
from d2f.engine.timing import stepped


@dataclass
class ShapesBench:
    """`d2f bench engine`: one sequence on random weights with SmolLM2-135M's shapes."""
    engine: EngineConfig
    prompt_len: int = field(default=42, metadata={"help": "prompt tokens"})
    max_tokens: int = field(default=64, metadata={"help": "tokens generated per request"})
    block_size: int = field(default=8, metadata={"help": "D2F block size"})


@dataclass
class BatchBench(ShapesBench):
    """`d2f bench batch`: the same model at several concurrencies."""
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64],
                                   metadata={"help": "concurrent requests of each round"})


def add_arguments(p, cls) -> None:
    add_dataclass_arguments(p, EngineConfig, include=("dtype", "quantization"))
    add_dataclass_arguments(p, cls)


def config(args, cls):
    engine = from_args(EngineConfig, args, model="<random smollm2 shapes>", kv_cache_memory=1 << 30)
    return from_args(cls, args, engine=engine)


def _engine(cfg: ShapesBench, **kw) -> Engine:
    spec, model = random_model(smollm2_spec(), cfg.engine.torch_dtype, quantization=cfg.engine.quantization)
    return Engine(replace(cfg.engine, **kw), model=(spec, model))


def _prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 49000, (n,), generator=g).tolist()


def _header(name: str, cfg: ShapesBench) -> dict:
    return {"benchmark": name, "device": "cpu", "dtype": str(cfg.engine.torch_dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "model": "SmolLM2-135M shapes, random weights"}


def bench_engine(cfg: ShapesBench) -> dict:
    """Single sequence: D2F at three tau_conf points and block size 1 (AR)."""
    engine = _engine(cfg)
    prompt = _prompt(cfg.prompt_len)
    engine.generate([prompt], DecodeParams(max_tokens=16, block_size=8, ignore_eos=True))  # warm-up
    settings = {"ar_block1": DecodeParams(max_tokens=cfg.max_tokens, block_size=1, ignore_eos=True)}
    for tau in (0.95, 0.9, 0.7):
        settings[f"d2f_b{cfg.block_size}_tau{tau}"] = DecodeParams(
            max_tokens=cfg.max_tokens, block_size=cfg.block_size, tau_conf=tau, tau_act=tau, ignore_eos=True)
    results = {name: stepped(engine, [prompt], p) for name, p in settings.items()}
    return _header("engine", cfg) | {"prompt_tokens": cfg.prompt_len, "max_tokens": cfg.max_tokens,
                                     "results": results}


def bench_batch(cfg: BatchBench) -> dict:
    """Aggregate throughput and per-request latency at several concurrencies, same knobs for all."""
    engine = _engine(cfg, max_num_seqs=128, max_num_batched_tokens=8192)
    params = DecodeParams(max_tokens=cfg.max_tokens, block_size=cfg.block_size, ignore_eos=True)
    engine.generate([_prompt(cfg.prompt_len)], DecodeParams(max_tokens=8, block_size=cfg.block_size,
                                                            ignore_eos=True))
    results = {}
    for conc in cfg.concurrency:
        prompts = [_prompt(cfg.prompt_len, seed=i) for i in range(conc)]
        results[str(conc)] = stepped(engine, prompts, params)
    base = results[str(cfg.concurrency[0])]["tokens_per_s"]
    for r in results.values():
        r["speedup_vs_first"] = round(r["tokens_per_s"] / base, 2)
    return _header("batch", cfg) | {"block_size": cfg.block_size, "prompt_tokens": cfg.prompt_len,
                                    "max_tokens": cfg.max_tokens, "results": results}
