"""`d2f refurbish [data]` and `d2f eval`: argument wiring only; the work lives in trainer, selfdistill, eval."""
from __future__ import annotations

import argparse
import sys


def _ratio_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.2,0.7), got {text!r}") from None
    return lo, hi


def add_refurbish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", help="checkpoint to refurbish: LLaDA/Dream (distillation) or Llama/Qwen2 (AR)")
    p.add_argument("--student-init", help="start the student from this checkpoint instead of the teacher")
    p.add_argument("--out", help="output directory (the engine loads it as it is)")
    p.add_argument("--data", help="comma-separated *.jsonl (prompt/answer or prompt_ids/answer_ids) and text "
                                  "files or directories of *.txt")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--mask-ratio", type=_ratio_pair, default=(0.2, 0.7), metavar="LO,HI")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora-rank", type=int, default=32, metavar="R")
    mode.add_argument("--full", action="store_true", help="train every weight instead of a LoRA adapter")
    p.add_argument("--lora-alpha", type=float, help="default: the rank")
    p.add_argument("--lora-dropout", type=float, default=0.1)
    p.add_argument("--steps", type=int, help="default: 100 unless --minutes is given")
    p.add_argument("--minutes", type=float)
    p.add_argument("--lr", type=float, help="default 1e-5 LLaDA, 5e-6 Dream, 1e-4 AR LoRA, 1e-5 AR --full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", metavar="DIR", help="continue from a refurbish output directory")
    p.add_argument("--fresh-optimizer", action="store_true", help="with --init-from: do not load optimizer state")
    p.add_argument("--no-optimizer-state", action="store_true", help="do not save optimizer state")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256, help="tokens per training sequence")
    p.add_argument("--save-every", type=int, default=100, metavar="STEPS")
    p.add_argument("--hard-weight", type=float, default=0.0,
                   help="AR mode: mix in this weight of cross-entropy on the true tokens")
    p.add_argument("--mask-token", default="auto", help="AR mode: auto | new | token id")
    p.add_argument("--ar-preserving", action="store_true",
                   help="AR teacher: keep the base frozen and exact, train only an adapter at mask positions "
                        "(the model decodes like the AR model at high thresholds)")
    p.add_argument("--anchors", type=int, default=24, help="--ar-preserving: mask spans per training example")
    p.add_argument("--chat", action="store_true", help="wrap text prompts in the tokenizer's chat template")
    p.add_argument("--save", default="auto", choices=["auto", "adapter", "merged"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    sub = p.add_subparsers(dest="action", metavar="data")
    d = sub.add_parser("data", help="self-distillation: the teacher answers a prompt set through our engine")
    d.add_argument("--teacher", required=True)
    d.add_argument("--prompts", required=True, help="text file (one prompt a line) or JSONL with prompt/prompt_ids")
    d.add_argument("--out", required=True, help="JSONL file to write")
    d.add_argument("--max-tokens", type=int, default=128)
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--top-p", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--limit", type=int)
    d.add_argument("--chat", action="store_true")
    d.add_argument("--keep-truncated", action="store_true",
                   help="keep answers cut by --max-tokens (EOS appended) instead of dropping them")
    d.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    d.add_argument("--device", default="cpu")
    d.add_argument("--kv-cache-mb", type=int, help="KV pool size (default: the engine's)")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="D2F checkpoint (or the base of --lora)")
    p.add_argument("--lora", help="PEFT adapter over --model")
    p.add_argument("--prompts", required=True, help="held-out prompts: text (one a line) or JSONL")
    p.add_argument("--knobs", default="0.95,0.9,0.85",
                   help="comma-separated settings: a number sets tau_act = tau_conf; quality|balanced|fast; "
                        "or tau_conf/tau_act/block_size, e.g. 0.9/0.95/32")
    p.add_argument("--reference-model", help="AR model for NLL, agreement and the AR point "
                                             "(default: the teacher recorded in the D2F checkpoint)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--limit", type=int)
    p.add_argument("--chat", action="store_true")
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dtype", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--kv-cache-mb", type=int, default=256, help="KV pool of each of the two engines")
    p.add_argument("--single-stream", type=int, default=0, metavar="N",
                   help="also time the first N prompts one at a time (single-stream tokens/s)")


def _train_config(args):
    from .trainer import TrainConfig

    missing = [f"--{n.replace('_', '-')}" for n in ("teacher", "out", "data") if not getattr(args, n)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required")
    return TrainConfig(
        teacher=args.teacher, out=args.out, data=args.data, student_init=args.student_init,
        block_size=args.block_size, mask_lo=args.mask_ratio[0], mask_hi=args.mask_ratio[1],
        lora_rank=None if args.full else args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        steps=args.steps, minutes=args.minutes, lr=args.lr, seed=args.seed, init_from=args.init_from,
        load_optimizer=not args.fresh_optimizer, save_optimizer=not args.no_optimizer_state,
        batch_size=args.batch_size, max_len=args.max_len, save_every=args.save_every, hard_weight=args.hard_weight,
        mask_token=args.mask_token, chat=args.chat, save=args.save, dtype=args.dtype, device=args.device)


def _run_ar_preserving(args) -> int:
    from . import arpreserve

    missing = [f"--{n}" for n in ("teacher", "out", "data") if not getattr(args, n)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required")
    if args.full:
        raise ValueError("--ar-preserving trains an adapter; --full does not apply")
    from d2f.engine.models.checkpoint import read_spec
    from d2f.engine.tokenizer import load_tokenizer

    from .student import choose_mask_token

    mask, new_row = choose_mask_token(read_spec(args.teacher)[0], load_tokenizer(args.teacher), args.mask_token)
    if new_row:  # the base stays as it is: an existing id is fed, its input vector is the adapter's
        raise ValueError("--ar-preserving needs --mask-token auto or an existing token id, not a new row")
    cfg = arpreserve.Config(teacher=args.teacher, data=args.data, out=args.out, block_size=args.block_size,
                            block_sizes=tuple(sorted({max(2, args.block_size // 2), args.block_size})),
                            mask_token=mask, rank=args.lora_rank, lr=args.lr or 1e-3, steps=args.steps,
                            minutes=args.minutes, batch_size=args.batch_size, anchors=args.anchors,
                            max_len=args.max_len, save_every=args.save_every, seed=args.seed,
                            init_from=args.init_from)
    return arpreserve.train(cfg)


def run(args) -> int:
    from d2f.engine.models.families import CheckpointError

    from .data import DataError

    try:
        if args.command == "eval":
            from .eval import run_eval

            return run_eval(args)
        if getattr(args, "action", None) == "data":
            from .selfdistill import run_data

            return run_data(args)
        if args.ar_preserving:
            return _run_ar_preserving(args)
        from .trainer import Refurbisher

        cfg = _train_config(args)
        trainer = Refurbisher(cfg)
        code = trainer.run()
        print(f"saved {trainer.save_mode} output at step {trainer.step} to {cfg.out}", file=sys.stderr)
        return code
    except (CheckpointError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"d2f {args.command}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """`python -m refurbish refurbish|eval ...`, the same commands `d2f` offers."""
    parser = argparse.ArgumentParser(prog="d2f")
    sub = parser.add_subparsers(dest="command", required=True)
    add_refurbish_arguments(sub.add_parser("refurbish", help="train a D2F model from a checkpoint"))
    add_eval_arguments(sub.add_parser("eval", help="speed/quality curve of a D2F model"))
    return run(parser.parse_args(argv))
