"""`d2f bench engine|batch|speed|serving`: arguments and dispatch; each benchmark prints one JSON object."""
from __future__ import annotations

import json

from . import batch, speed


def add_arguments(p) -> None:
    p.add_argument("what", choices=["engine", "batch", "speed", "serving"],
                   help="engine: one sequence, random weights; batch: concurrency sweep; speed: a real model "
                        "against the GEMV floor and llama.cpp")
    p.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--prompt-len", type=int, default=42)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--block-size", type=int, default=None, help="engine/batch: 8; speed/serving: the model's")
    speed.add_arguments(p)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64])


def run(args) -> int:
    if args.what == "serving":
        from . import serving

        if args.concurrency == [1, 4, 16, 64]:
            args.concurrency = [1, 8, 32]
        result = serving.run(args)
    else:
        result = {"engine": batch.bench_engine, "batch": batch.bench_batch, "speed": speed.run}[args.what](args)
    print(json.dumps(result, indent=1))
    return 0
