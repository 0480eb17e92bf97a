"""`d2f bench engine|batch|speed|serving|gpu`: each benchmark has its own flags (generated from its config
dataclass) and prints one JSON object."""
from __future__ import annotations

import json
import sys

from . import batch, gpu, serving, speed

BENCHES = {
    "engine": ("one sequence on random weights with SmolLM2-135M's shapes: tokens/s, forwards/token",
               lambda p: batch.add_arguments(p, batch.ShapesBench),
               lambda a: batch.bench_engine(batch.config(a, batch.ShapesBench))),
    "batch": ("the same model at several concurrencies: aggregate tokens/s and latency",
              lambda p: batch.add_arguments(p, batch.BatchBench),
              lambda a: batch.bench_batch(batch.config(a, batch.BatchBench))),
    "speed": ("a real model against the GEMV floor and llama.cpp", speed.add_arguments,
              lambda a: speed.run(speed.config(a))),
    "serving": ("streamed tokens/s over HTTP against the in-process engine", serving.add_arguments,
                lambda a: serving.run(serving.config(a))),
    "gpu": ("random-weight SmolLM2 and 7B shapes on a GPU: forwards against the HBM roofline, decode and "
            "batched tokens/s (scripts/gpu_check.sh)", gpu.add_arguments, lambda a: gpu.run(gpu.config(a))),
}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="what", required=True, metavar="{" + ",".join(BENCHES) + "}")
    for name, (help_text, add, _) in BENCHES.items():
        add(sub.add_parser(name, help=help_text, description=help_text))


def run(args) -> int:
    from d2f.engine.models.families import CheckpointError

    try:
        result = BENCHES[args.what][2](args)
    except (CheckpointError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"d2f bench {args.what}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0
