"""`d2f refurbish data`: answers for a prompt set, written by the teacher through our own batched engine.

Reproducible from the seed: request i samples with seed (seed, i), and the engine's output does not depend on
batch composition, so the file is the same however the prompts are batched.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.params import DecodeParams
from d2f.engine.tokenizer import load_tokenizer

from .data import load_prompts


def request_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def generate_answers(teacher: str, prompts: list[list[int]], *, max_tokens: int, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int = 0, keep_truncated: bool = False, block_size: int | None = None,
                     dtype: str = "fp32", device: str = "cpu", chunk: int = 64, kv_cache_memory: int | None = None,
                     progress=None) -> tuple[list[dict], int]:
    """(rows, number dropped). Every kept answer ends with EOS: answers cut by max_tokens are dropped (a model
    taught to stop mid-thought is worse than one with less data) unless keep_truncated, which appends EOS."""
    engine = Engine(EngineConfig(model=teacher, dtype=dtype, device=device, seed=seed, kv_cache_memory=kv_cache_memory))
    eos = engine.spec.eos_token_ids
    if not eos:
        raise ValueError(f"{teacher}: config has no eos_token_id; answers could not end in EOS")
    rows, dropped = [], 0
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        params = [DecodeParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                               seed=request_seed(seed, start + i), block_size=block_size) for i in range(len(part))]
        for prompt, out in zip(part, engine.generate(part, params)):
            if out.finish_reason != "stop" and not keep_truncated:
                dropped += 1
                continue
            rows.append({"prompt_ids": list(prompt), "answer_ids": list(out.token_ids) + [eos[0]],
                         "finish_reason": out.finish_reason})
        if progress:
            progress(min(start + chunk, len(prompts)), len(prompts))
    return rows, dropped


def run_data(args) -> int:
    tok = load_tokenizer(args.teacher)
    prompts = load_prompts(args.prompts, tok, args.chat)
    if args.limit:
        prompts = prompts[:args.limit]
    rows, dropped = generate_answers(
        args.teacher, prompts, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
        seed=args.seed, keep_truncated=args.keep_truncated, dtype=args.dtype, device=args.device,
        kv_cache_memory=args.kv_cache_mb << 20 if args.kv_cache_mb else None,
        progress=lambda done, total: print(f"\rself-distillation {done}/{total}", end="", file=sys.stderr))
    print(file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in rows:
            if tok is not None:
                row["prompt"] = tok.decode(row["prompt_ids"])
                row["answer"] = tok.decode(row["answer_ids"], skip_special_tokens=True)
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} pairs to {out} ({dropped} answers hit --max-tokens before EOS and were dropped)",
          file=sys.stderr)
    return 0
