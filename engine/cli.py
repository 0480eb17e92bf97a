"""`d2f generate`: decode one prompt with the engine and print the answer."""
from __future__ import annotations

import argparse
import json
import sys
import time


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint directory, or smollm2 / smollm2-d2f for the embedded model "
                                   "as AR / as D2F (default: the embedded default model)")
    p.add_argument("--lora", help="PEFT LoRA adapter directory, merged at load")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 on CUDA and on CPUs with native bf16 matmuls, else fp32")
    p.add_argument("--device", default="cpu")


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs a tokenizer in the checkpoint)")
    src.add_argument("--prompt-ids", help="comma-separated prompt token ids")
    p.add_argument("--chat", action="store_true", help="wrap --prompt in the tokenizer's chat template")
    p.add_argument("--block-size", type=int)
    p.add_argument("--tau-add", type=float)
    p.add_argument("--tau-act", type=float)
    p.add_argument("--tau-conf", type=float)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _fail(msg: str) -> int:
    print(f"d2f: error: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    from .config import EngineConfig
    from .engine import Engine
    from .models.families import CheckpointError
    from .params import DecodeParams
    from .models.registry import resolve_model
    from .tokenizer import load_tokenizer

    try:
        model_dir = resolve_model(args.model)
        engine = Engine(EngineConfig(model=model_dir, lora=args.lora, dtype=args.dtype, device=args.device))
        tok = load_tokenizer(model_dir)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    if args.prompt_ids is not None:
        try:
            prompt = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            return _fail(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}")
    elif tok is None:
        return _fail(f"{model_dir} has no tokenizer; use --prompt-ids")
    elif args.chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)
    else:
        prompt = tok.encode(args.prompt)
    params = DecodeParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, block_size=args.block_size, tau_add=args.tau_add,
                          tau_act=args.tau_act, tau_conf=args.tau_conf)
    t0 = time.perf_counter()
    try:
        out = engine.generate([list(prompt)], params)[0]
    except ValueError as exc:
        return _fail(str(exc))
    seconds = time.perf_counter() - t0
    text = tok.decode(out.token_ids, skip_special_tokens=True) if tok is not None else None
    if args.json:
        print(json.dumps({"token_ids": out.token_ids, "text": text, "finish_reason": out.finish_reason,
                          "forwards": out.num_forwards, "prompt_tokens": len(prompt), "seconds": round(seconds, 4),
                          "tokens_per_second": round(len(out.token_ids) / seconds, 2) if seconds else None}))
    else:
        print(text if text is not None else " ".join(map(str, out.token_ids)))
        print(f"[{len(out.token_ids)} tokens, {out.num_forwards} forwards, {seconds:.2f} s, "
              f"finish={out.finish_reason}]", file=sys.stderr)
    return 0
