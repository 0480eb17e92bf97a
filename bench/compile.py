"""Does torch.compile of the decoder's glue pay? Prints JSON: eager vs compiled forward per window size,
single-stream AR decode, compile time, and how far compiled logits are from eager ones.

    python -m d2f.bench.compile [--dtype fp32|bf16] [--model smollm2]

Inductor fuses everything between the matmuls (RMSNorm, RoPE, SiLU*up, residuals); the linears and
the paged attention stay the engine's own eager code behind opaque custom ops, so what changes is
only the ~40 small ops per layer. Not in the engine because on the machine it was measured on (2-core
AVX2, fp32) its gains were within noise for single-stream decode and did not cover its costs (minutes
of compilation per start, a C++ compiler in the image, logits no longer bit-identical to eager); rerun it
where the matmuls are fast (native bf16), where the glue is a larger share of a forward.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from d2f.bench.speed import cached_windows  # noqa: E402
from d2f.engine.timing import fastest_generate, median_ms  # noqa: E402
from d2f.engine.models.registry import resolve_model  # noqa: E402
from d2f.engine.config import EngineConfig  # noqa: E402
from d2f.engine.engine import Engine  # noqa: E402
from d2f.engine.models import decoder as D  # noqa: E402
from d2f.engine.models.layer import FUSED, layer_forward, rms_norm  # noqa: E402
from d2f.engine.params import DecodeParams  # noqa: E402


def install(engine: Engine):
    """Replace Decoder.forward with a compiled body: the shared layer body, with the linears and the paged
    attention behind opaque custom ops."""
    model, spec = engine.model, engine.spec
    state = {}
    widths = {f: sum(spec.projection_shape(p)[0] for p in parts) for f, parts in FUSED.items()}

    @torch.library.custom_op("d2fbench::linear", mutates_args=())
    def linear(x: torch.Tensor, li: int, name: str) -> torch.Tensor:
        return model.layers[li][name](x)

    @linear.register_fake
    def _(x, li, name):
        return x.new_empty(x.shape[0], widths[name])

    # The KV cache is written inside: hidden from the compiler so it never copies the whole cache.
    @torch.library.custom_op("d2fbench::attention", mutates_args=())
    def attention(li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return model._attention(li, q, k, v, state["kv"], state["batch"])

    @attention.register_fake
    def _(li, q, k, v):
        return q.new_empty(q.shape[0], q.shape[1] * q.shape[2])

    def attend(li, q, k, v):
        return attention(li, q.contiguous(), k, v)

    def project(li, name, x):
        return linear(x, li, name)

    def body(h, cos, sin):
        for li, layer in enumerate(model.layers):
            h = layer_forward(spec, li, layer["attn_norm"], layer["mlp_norm"], h, cos, sin, attend, project)
        return rms_norm(h, model.norm, spec.rms_eps)

    compiled = torch.compile(body, dynamic=True, fullgraph=True)

    @torch.inference_mode()
    def forward(self, input_ids, batch, kv):
        state["kv"], state["batch"] = kv, batch
        cos = self.cos.index_select(0, batch.positions)[:, None, :]
        sin = self.sin.index_select(0, batch.positions)[:, None, :]
        return compiled(F.embedding(input_ids, self.embed), cos, sin)

    D.Decoder.forward = forward


def forwards(engine: Engine, windows: list[int], repeat: int = 7):
    ms, logits = {}, {}
    for w, work in cached_windows(engine, 300, windows):
        logits[w] = engine.runner.run([work])[0]
        ms[str(w)] = median_ms(lambda: engine.runner.run([work]), repeat)
    return ms, logits


def decode(engine: Engine, runs: int = 3):
    t = fastest_generate(engine, [list(range(100, 142))], DecodeParams(max_tokens=64, block_size=1, ignore_eos=True),
                         runs=runs)
    return round(t.tokens_per_second, 2), t.outputs[0].token_ids


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--quantization", default="none", choices=["none", "int8", "int4"])
    args = ap.parse_args()
    engine = Engine(EngineConfig(model=resolve_model(args.model), dtype=args.dtype, quantization=args.quantization,
                                 kv_cache_memory=1 << 30))
    if engine.model.adapter is not None:
        sys.exit("bench_compile: plain (non-AR-preserving) models only; the mask adapter is not traced")
    windows = [1, 2, 4, 8, 16, 32]
    eager_ms, eager_logits = forwards(engine, windows)
    eager_tok_s, eager_ids = decode(engine)
    install(engine)
    t = time.perf_counter()
    forwards(engine, [1, 2], repeat=1)  # T=1 and one dynamic-T graph
    compile_s = time.perf_counter() - t
    comp_ms, comp_logits = forwards(engine, windows)
    comp_tok_s, comp_ids = decode(engine)
    print(json.dumps({
        "benchmark": "compile_glue", "dtype": args.dtype, "quantization": args.quantization,
        "threads": torch.get_num_threads(),
        "compile_and_warmup_s": round(compile_s, 1),
        "eager_fwd_ms": eager_ms, "compiled_fwd_ms": comp_ms,
        "eager_ar_tok_s": eager_tok_s, "compiled_ar_tok_s": comp_tok_s,
        "same_greedy_tokens": eager_ids == comp_ids,
        "logits_bitwise_equal": {str(w): torch.equal(eager_logits[w], comp_logits[w]) for w in windows},
        "max_abs_logit_diff": {str(w): (eager_logits[w] - comp_logits[w]).abs().max().item() for w in windows},
    }, indent=1))


if __name__ == "__main__":
    main()
