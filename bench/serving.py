"""`d2f bench serving`: streamed tokens/s over HTTP against the in-process engine on the same model and knobs,
plus time to first block and throughput at several concurrencies. Prints JSON; asserts nothing."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(model_dir: str, dtype: str, prompt_ids: list[int], max_tokens: int, knobs: dict) -> dict:
    from d2f.engine.config import EngineConfig
    from d2f.engine.engine import Engine
    from d2f.engine.params import DecodeParams

    engine = Engine(EngineConfig(model=model_dir, dtype=dtype))
    params = DecodeParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **knobs)
    engine.generate([prompt_ids], DecodeParams(max_tokens=4, ignore_eos=True))  # warm-up
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        out = engine.generate([prompt_ids], params)[0]
        best = max(best, len(out.token_ids) / (time.perf_counter() - t))
    return {"tok_s": round(best, 2)}


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


def run(args) -> dict:
    from d2f.engine.models.registry import resolve_model
    from d2f.engine.tokenizer import load_tokenizer

    model_dir = resolve_model(args.model)
    tok = load_tokenizer(model_dir)
    prompt_ids = list(tok.encode(PROMPT))
    knobs = {"block_size": args.block_size} if args.block_size else {}
    result = {"benchmark": "serving", "model": model_dir, "dtype": args.dtype, "max_tokens": args.max_tokens,
              "prompt_tokens": len(prompt_ids), "knobs": knobs,
              "in_process": in_process(model_dir, args.dtype, prompt_ids, args.max_tokens, knobs)}
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "d2f", "serve", "--model", model_dir, "--port", str(port),
                             "--dtype", args.dtype, "--log-level", "warning"], env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        body = {"prompt": prompt_ids, "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}, **knobs}
        asyncio.run(_round(url, body | {"max_tokens": 4}, 1))  # warm-up
        rounds = [asyncio.run(_round(url, body, c)) for c in args.concurrency]
    finally:
        proc.terminate()
        proc.wait(60)
    result["http"] = rounds
    one = next((r for r in rounds if r["concurrency"] == 1), None)
    if one:
        result["http_over_in_process_at_1"] = round(one["per_request_tok_s"] / result["in_process"]["tok_s"], 3)
    return result
