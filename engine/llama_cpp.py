"""llama.cpp as the yardstick: its single-stream decode speed on a GGUF, beside ours on the same machine.

It runs in a child process of its own (`python -m d2f.engine.llama_cpp`), so its threads and resident
memory are its own and a crash of the optional llama-cpp-python cannot take the caller down. In the engine
package because both `d2f bench speed` and `d2f eval` compare against it and eval may not import bench.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

from .timing import rss_mb


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def tok_s(gguf: str, prompts: list[list[int]], max_tokens: int, threads: int, runs: int = 2) -> dict | None:
    """Greedy decode of each prompt (token ids) alone, best of `runs` per prompt: tokens per second over all
    prompts (prompt processing included), decode-only tokens per second, and the child's RSS.
    None without llama-cpp-python; {"error": ...} when the child fails."""
    if not available():
        return None
    res = subprocess.run([sys.executable, "-m", "d2f.engine.llama_cpp", gguf, json.dumps(prompts), str(max_tokens),
                          str(threads), str(runs)], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout)


def _child(gguf: str, prompts: list[list[int]], max_tokens: int, threads: int, runs: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_threads=threads, n_ctx=2048, verbose=False)
    tokens = decode_tokens = 0
    seconds = decode_seconds = 0.0
    for prompt in prompts:
        best = None
        for _ in range(runs):
            llm.reset()
            n, t0, t_first = 0, time.perf_counter(), None
            for tok in llm.generate(prompt, temp=0.0, top_k=1):
                if t_first is None:
                    t_first = time.perf_counter()
                n += 1
                if tok == llm.token_eos() or n >= max_tokens:
                    break
            total = time.perf_counter() - t0
            if best is None or total / n < best[1] / best[0]:
                best = (n, total, total - (t_first - t0))
        n, total, decode = best
        tokens, seconds = tokens + n, seconds + total
        decode_tokens, decode_seconds = decode_tokens + n - 1, decode_seconds + decode
    return {"tok_s": round(tokens / seconds, 2),
            "decode_tok_s": round(decode_tokens / decode_seconds, 2) if decode_seconds > 0 else None,
            "tokens": tokens, "prompts": len(prompts), "rss_mb": rss_mb()}


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                            int(sys.argv[5]))))
