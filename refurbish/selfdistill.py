"""`d2f refurbish data`: answers for a prompt set, written by the teacher through our own batched engine.

Reproducible from the seed: request i samples with seed (seed, i), and the engine's output does not depend on
batch composition, so the file is the same however the prompts are batched.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

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


@dataclass
class DataConfig:
    """`d2f refurbish data`; the defaults are the command's flags' (refurbish/cli.py)."""
    teacher: str
    prompts: str
    out: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    limit: int | None
    chat: bool
    keep_truncated: bool
    dtype: str
    device: str
    kv_cache_mb: int | None


def run_data(cfg: DataConfig) -> int:
    tok = load_tokenizer(cfg.teacher)
    prompts = load_prompts(cfg.prompts, tok, cfg.chat)
    if cfg.limit:
        prompts = prompts[:cfg.limit]
    with tqdm(total=len(prompts), desc="self-distillation", unit="prompt", file=sys.stderr) as bar:
        rows, dropped = generate_answers(
            cfg.teacher, prompts, max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
            seed=cfg.seed, keep_truncated=cfg.keep_truncated, dtype=cfg.dtype, device=cfg.device,
            kv_cache_memory=cfg.kv_cache_mb << 20 if cfg.kv_cache_mb else None,
            progress=lambda done, total: bar.update(done - bar.n))
    out = Path(cfg.out)
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
