"""`d2f bench serving`: streamed tokens/s over HTTP against the in-process engine on the same model and knobs,
plus time to first block and throughput at several concurrencies. Prints JSON; asserts nothing."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

from d2f.engine.cli_args import MODEL_FIELDS, add_dataclass_arguments, engine_config, from_args
from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.params import DecodeParams
from d2f.engine.timing import fastest_generate

from .live import LiveServer

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class ServingConfig:
    engine: EngineConfig
    max_tokens: int = field(default=64, metadata={"help": "tokens generated per request"})
    block_size: int | None = field(default=None, metadata={"help": "D2F block size (default: the model's)"})
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32],
                                   metadata={"help": "concurrent streams of each round"})


def add_arguments(p) -> None:
    add_dataclass_arguments(p, EngineConfig, include=MODEL_FIELDS)
    add_dataclass_arguments(p, ServingConfig)


def config(args) -> ServingConfig:
    return from_args(ServingConfig, args, engine=engine_config(args))


def in_process(config: EngineConfig, prompt_ids: list[int], max_tokens: int, knobs: dict) -> dict:
    engine = Engine(config)
    params = DecodeParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **knobs)
    engine.generate([prompt_ids], DecodeParams(max_tokens=4, ignore_eos=True))  # warm-up
    return {"tok_s": round(fastest_generate(engine, [prompt_ids], params, runs=2).tokens_per_second, 2)}


def serve_args(config: EngineConfig) -> list[str]:
    """`d2f serve` flags for the engine the in-process run uses."""
    args = ["--model", config.model, "--dtype", config.dtype, "--device", config.device,
            "--quantization", config.quantization]
    return args + (["--lora", config.lora] if config.lora else [])


async def _one(client: httpx.AsyncClient, body: dict) -> dict:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and event.get("choices"):
                first = time.perf_counter() - t0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return {"seconds": time.perf_counter() - t0, "ttfb": first, "tokens": tokens}


async def _round(url: str, body: dict, concurrency: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*[_one(client, body) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "aggregate_tok_s": round(tokens / wall, 2),
            "per_request_tok_s": round(statistics.median(r["tokens"] / r["seconds"] for r in results), 2),
            "ttfb_p50_s": round(statistics.median(r["ttfb"] for r in results), 3),
            "ttfb_max_s": round(max(r["ttfb"] for r in results), 3)}


def run(cfg: ServingConfig) -> dict:
    from d2f.engine.tokenizer import load_tokenizer

    model_dir = cfg.engine.model
    tok = load_tokenizer(model_dir)
    if tok is None:
        raise ValueError(f"{model_dir}: no tokenizer files; the HTTP API needs one")
    prompt_ids = list(tok.encode(PROMPT))
    knobs = {"block_size": cfg.block_size} if cfg.block_size else {}
    result = {"benchmark": "serving", "model": model_dir, "dtype": cfg.engine.dtype, "max_tokens": cfg.max_tokens,
              "prompt_tokens": len(prompt_ids), "knobs": knobs,
              "in_process": in_process(cfg.engine, prompt_ids, cfg.max_tokens, knobs)}
    body = {"prompt": prompt_ids, "max_tokens": cfg.max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}, **knobs}
    with LiveServer(*serve_args(cfg.engine), capture=False) as server:
        asyncio.run(_round(server.url, body | {"max_tokens": 4}, 1))  # warm-up
        rounds = [asyncio.run(_round(server.url, body, c)) for c in cfg.concurrency]
        server.drain()
    result["http"] = rounds
    one = next((r for r in rounds if r["concurrency"] == 1), None)
    if one:
        result["http_over_in_process_at_1"] = round(one["per_request_tok_s"] / result["in_process"]["tok_s"], 3)
    return result
