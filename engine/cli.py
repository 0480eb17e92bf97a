"""`d2f generate`: decode one prompt with the engine and print the answer."""
from __future__ import annotations

import argparse
import json
import sys

from .cli_args import MODEL_FIELDS, add_dataclass_arguments, engine_config
from .config import EngineConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(p, EngineConfig, include=MODEL_FIELDS)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (needs a tokenizer in the checkpoint)")
    src.add_argument("--prompt-ids", help="comma-separated prompt token ids")
    p.add_argument("--chat", action="store_true", help="wrap --prompt in the tokenizer's chat template")
    p.add_argument("--speed", type=_speed, metavar="{quality,balanced,fast,exact,0..1}",
                   help="a D2F speed preset or number (--tau-* override it); exact: the AR model's own tokens, "
                        "drafted by the mask rows and verified (AR-preserving models)")
    p.add_argument("--block-size", type=int)
    p.add_argument("--draft-width", type=int, help="exact mode, greedy: the drafter's top tokens for each first "
                                                    "draft run in the forward (default: the model's)")
    p.add_argument("--tau-add", type=float)
    p.add_argument("--tau-act", type=float)
    p.add_argument("--tau-conf", type=float)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _speed(text: str) -> str | float:
    from .params import EXACT, SPEED_PRESETS

    if text in SPEED_PRESETS or text == EXACT:
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected quality, balanced, fast, exact or a number in [0, 1], got {text!r}")
    return value


def _fail(msg: str) -> int:
    print(f"d2f: error: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    from .engine import Engine
    from .models.families import CheckpointError
    from .params import DecodeParams, speed_fields
    from .timing import timed_generate
    from .tokenizer import load_tokenizer

    try:
        config = engine_config(args)
        model_dir = config.model
        engine = Engine(config)
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
    knobs = speed_fields(args.speed) if args.speed is not None else {}
    for name in ("tau_act", "tau_conf"):  # explicit taus win over the speed
        if getattr(args, name) is not None:
            knobs[name] = getattr(args, name)
    params = DecodeParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, seed=args.seed, block_size=args.block_size, tau_add=args.tau_add,
                          draft_width=args.draft_width, **knobs)
    try:
        timed = timed_generate(engine, [list(prompt)], params)
    except ValueError as exc:
        return _fail(str(exc))
    out, seconds = timed.outputs[0], timed.seconds
    text = tok.decode(out.token_ids, skip_special_tokens=True) if tok is not None else None
    drafts = out.draft_stats
    if args.json:
        report = {"token_ids": out.token_ids, "text": text, "finish_reason": out.finish_reason,
                  "forwards": out.num_forwards, "prompt_tokens": len(prompt), "seconds": round(seconds, 4),
                  "tokens_per_second": round(len(out.token_ids) / seconds, 2) if seconds else None}
        if drafts is not None:  # exact mode: drafts checked and accepted per offset 1..B-1
            report |= {"drafts_proposed": drafts.proposed, "drafts_accepted": drafts.accepted}
        print(json.dumps(report))
    else:
        print(text if text is not None else " ".join(map(str, out.token_ids)))
        accepted = "" if drafts is None else ", drafts accepted per offset " + " ".join(
            f"{a}/{p}" for a, p in zip(drafts.accepted, drafts.proposed))
        print(f"[{len(out.token_ids)} tokens, {out.num_forwards} forwards, {seconds:.2f} s, "
              f"finish={out.finish_reason}{accepted}]", file=sys.stderr)
    return 0
