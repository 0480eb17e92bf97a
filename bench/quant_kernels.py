"""What do weight-only int8 / int4 kernels buy on this CPU? Prints JSON: ms for one pass of 1/4/16/32 rows
through every matrix of SmolLM2-135M as the decoder runs them (30 layers of fused qkv, o, fused gate|up,
down, then the tied 49152-row head), median of 7, per kernel; the head alone as well; and the CPU's ISA.

    python -m d2f.bench.quant_kernels [--threads 2] [--rows 1,4,16,32]

Weights are random (a kernel's speed does not depend on their values). int4 with group 128 cannot cover
the 576-wide inputs (576 % 128 != 0): that row uses group 64 there and 128 for down (1536 wide).
With 2 threads the numbers swing by 10x and more when other processes hold the cores (each parallel
region waits for its slowest thread); compare kernels from one quiet run, or rerun with --threads 1.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform

import torch
import torch.nn.functional as F

from d2f.engine.timing import median_ms
from d2f.engine.models.linear import Linear, onednn_supported
from d2f.engine.models.quant import Int4Linear, Int4Weights, Int8Linear, Int8Weights

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, LAYERS = 576, 9, 3, 64, 1536, 49152, 30
LAYER_SHAPES = [((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN), (HIDDEN, HEADS * HEAD_DIM),
                (2 * INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)]  # (out, in) as the decoder fuses them
HEAD_SHAPE = (VOCAB, HIDDEN)
DTYPE = torch.bfloat16


def _random_int4(out: int, inp: int, group: int, g: torch.Generator) -> Int4Weights:
    q4 = torch.randint(0, 256, (out, inp // 2), dtype=torch.uint8, generator=g)
    scale = torch.rand(out, inp // group, generator=g).half() * 0.01
    return Int4Weights(q4, scale, -8 * scale, group)


def _random_int8(out: int, inp: int, g: torch.Generator) -> Int8Weights:
    return Int8Weights(torch.randint(-127, 128, (out, inp), dtype=torch.int8, generator=g),
                       torch.rand(out, generator=g) * 0.001)


def _builders() -> dict:
    g = torch.Generator().manual_seed(0)
    dense = lambda o, i: torch.randn(o, i, generator=g).mul_(0.02).to(DTYPE)  # noqa: E731

    def fused_linear(o, i):
        w = dense(o, i)
        return lambda x: F.linear(x, w)

    def int4(group, scale_dtype=None):
        def build(o, i):
            gs = group if i % group == 0 else 64
            return Int4Linear(_random_int4(o, i, gs, g), DTYPE, scale_dtype=scale_dtype)
        return build

    builders = {"bf16_F.linear": fused_linear}
    if onednn_supported(DTYPE, "cpu"):
        builders["bf16_onednn_Linear"] = lambda o, i: Linear(dense(o, i))
    builders.update({
        "int8": lambda o, i: Int8Linear(_random_int8(o, i, g), DTYPE),
        "int4_g32": int4(32),
        "int4_g32_fp32_scales": int4(32, torch.float32),
        "int4_g64": int4(64),
        "int4_g128_(g64_where_in=576)": int4(128),
    })
    return builders


def isa() -> dict:
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        info = {}
    info = {k.strip(): v.strip() for k, v in info.items()}
    keep = ("avx", "amx", "fma", "f16c", "vnni", "bf16")
    return {"cpu": info.get("model name", platform.processor()),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": sorted(f for f in info.get("flags", "").split() if any(k in f for k in keep))}


def _time_kernel(build, rows: list[int], repeat: int) -> dict:
    layers = [build(o, i) for _ in range(LAYERS) for o, i in LAYER_SHAPES]
    head = build(*HEAD_SHAPE)
    inputs = {r: {i: torch.randn(r, i).to(DTYPE) for i in (HIDDEN, INTERMEDIATE)} for r in rows}

    def everything(r):
        for lin, (_, i) in zip(layers, LAYER_SHAPES * LAYERS):
            lin(inputs[r][i])
        head(inputs[r][HIDDEN])

    return {f"rows_{r}": {"all": median_ms(lambda: everything(r), repeat),
                          "head": median_ms(lambda: head(inputs[r][HIDDEN]), repeat)} for r in rows}


def run(threads: int, rows: list[int], repeat: int = 7) -> dict:
    torch.set_num_threads(threads)
    result = {"torch": torch.__version__, "threads": threads, "repeat": repeat, **isa(),
              "note": "ms per pass over all 120 fused layer matrices + head (all), and the head alone",
              "kernels": {}}
    with torch.inference_mode():
        for name, build in _builders().items():
            result["kernels"][name] = _time_kernel(build, rows, repeat)
            gc.collect()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 32])
    args = p.parse_args(argv)
    print(json.dumps(run(args.threads, args.rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
