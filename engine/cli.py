"""`d2f` console script: serve | generate | bench | refurbish | eval."""
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


def _generate_args(p: argparse.ArgumentParser) -> None:
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


# Names for the embedded default model; anything else is a checkpoint directory.
AR_DEFAULT = "smollm2"
D2F_DEFAULT = "smollm2-d2f"
# The D2F default replaces the AR one only once it meets the quality bar (see README, "Default model").
DEFAULT_IS_D2F = False


def default_name() -> str:
    from .models import default_d2f

    return D2F_DEFAULT if DEFAULT_IS_D2F and default_d2f.available() else AR_DEFAULT


def served_name(path: str | None) -> str | None:
    """The name a default model is served under; None for a checkpoint directory (its folder name)."""
    name = path or default_name()
    return {AR_DEFAULT: "smollm2-135m-instruct", D2F_DEFAULT: "smollm2-135m-instruct-d2f"}.get(name)


def resolve_model(path: str | None) -> str:
    name = path or default_name()
    progress = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if name == AR_DEFAULT:
        from .models.default_model import ensure_default_model

        return str(ensure_default_model(progress=progress))
    if name == D2F_DEFAULT:
        from .models.default_d2f import ensure_default_d2f_model

        return str(ensure_default_d2f_model(progress=progress))
    return name


def run_generate(args) -> int:
    from .config import EngineConfig
    from .engine import Engine
    from .models.families import CheckpointError
    from .params import DecodeParams
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d2f", description="D2F diffusion-LLM inference server")
    sub = parser.add_subparsers(dest="command", required=True)
    _generate_args(sub.add_parser("generate", help="decode one prompt and print the answer"))
    serve = sub.add_parser("serve", help="run the OpenAI-compatible HTTP server")
    bench = sub.add_parser("bench", help="benchmarks that print JSON")
    from server import launch  # the HTTP side ships in the same distribution

    launch.add_arguments(serve)
    from . import bench as bench_mod

    bench_mod.add_arguments(bench)
    from refurbish import cli as refurbish_cli  # training ships in the same distribution

    refurbish_cli.add_refurbish_arguments(sub.add_parser("refurbish", help="train a D2F model from a checkpoint"))
    refurbish_cli.add_eval_arguments(sub.add_parser("eval", help="speed/quality curve of a D2F model"))
    args = parser.parse_args(argv)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "serve":
        return launch.run(args)
    if args.command in ("refurbish", "eval"):
        return refurbish_cli.run(args)
    return bench_mod.run(args)


if __name__ == "__main__":
    sys.exit(main())
