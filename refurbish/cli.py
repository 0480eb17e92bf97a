"""`d2f refurbish [data]` and `d2f eval`: argument wiring only; the work lives in trainer, arpreserve,
selfdistill and eval. Every flag a mode does not use is refused, never silently ignored."""
from __future__ import annotations

import argparse
import sys

from d2f.engine.cli_args import MODEL_FIELDS, add_dataclass_arguments, engine_config, from_args
from d2f.engine.config import EngineConfig

from .eval import EvalConfig


def _ratio_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.2,0.7), got {text!r}") from None
    return lo, hi


class _Flags:
    """add_argument that leaves a flag out of the namespace unless it is given, keeping its default here:
    run() tells given flags from defaults and refuses those the chosen mode does not use."""

    def __init__(self, parser):
        self.parser, self.defaults = parser, {}

    def __call__(self, *names, default=None, group=None, **kw):
        action = (group or self.parser).add_argument(*names, default=argparse.SUPPRESS, **kw)
        self.defaults[action.dest] = False if kw.get("action") == "store_true" else default


def _train_flags(add: _Flags) -> None:
    add("--teacher", help="checkpoint to refurbish: LLaDA/Dream (distillation) or Llama/Qwen2 (AR)")
    add("--student-init", help="start the student from this checkpoint instead of the teacher")
    add("--out", help="output directory (the engine loads it as it is)")
    add("--data", help="comma-separated *.jsonl (prompt/answer or prompt_ids/answer_ids) and text "
                       "files or directories of *.txt")
    add("--block-size", type=int, default=16)
    add("--mask-ratio", type=_ratio_pair, default=(0.2, 0.7), metavar="LO,HI")
    mode = add.parser.add_mutually_exclusive_group()
    add("--lora-rank", type=int, default=32, metavar="R", group=mode)
    add("--full", action="store_true", help="train every weight instead of a LoRA adapter", group=mode)
    add("--lora-alpha", type=float, help="default: the rank")
    add("--lora-dropout", type=float, default=0.1)
    add("--steps", type=int, help="default: 100 unless --minutes is given")
    add("--minutes", type=float)
    add("--lr", type=float, help="default 1e-5 LLaDA, 5e-6 Dream, 1e-4 AR LoRA, 1e-5 AR --full, "
                                 "1e-3 --ar-preserving")
    add("--seed", type=int, default=0)
    add("--init-from", metavar="DIR", help="continue from a refurbish output directory")
    add("--fresh-optimizer", action="store_true", help="with --init-from: do not load optimizer state")
    add("--no-optimizer-state", action="store_true", help="do not save optimizer state")
    add("--batch-size", type=int, default=4)
    add("--max-len", type=int, default=256, help="tokens per training sequence")
    add("--save-every", type=int, default=100, metavar="STEPS")
    add("--hard-weight", type=float, default=0.0,
        help="AR teacher: mix in this weight of cross-entropy on the true tokens")
    add("--mask-token", default="auto", help="AR teacher: auto | new | token id")
    add("--ar-preserving", action="store_true",
        help="AR teacher: keep the base frozen and exact, train only an adapter at mask positions "
             "(the model decodes like the AR model at high thresholds)")
    add("--anchors", type=int, default=24, help="--ar-preserving: mask spans per training example")
    add("--adapt", default="q,k,v,o,gate,up,down", metavar="NAMES",
        help="--ar-preserving: the projections the mask adapter acts on (fewer: a cheaper drafter)")
    add("--chat", action="store_true", help="wrap text prompts in the tokenizer's chat template")
    add("--save", default="auto", choices=["auto", "adapter", "merged"])
    add("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="training dtype")
    add("--device", default="cpu")


def _data_flags(add: _Flags) -> None:
    add("--teacher", help="the model that answers (required)")
    add("--prompts", help="text file (one prompt a line) or JSONL with prompt/prompt_ids (required)")
    add("--out", help="JSONL file to write (required)")
    add("--max-tokens", type=int, default=128)
    add("--temperature", type=float, default=0.0)
    add("--top-p", type=float, default=1.0)
    add("--seed", type=int, default=0)
    add("--limit", type=int)
    add("--chat", action="store_true", help="wrap prompts in the tokenizer's chat template")
    add("--keep-truncated", action="store_true",
        help="keep answers cut by --max-tokens (EOS appended) instead of dropping them")
    add("--dtype", default="fp32", choices=["auto", "fp32", "bf16", "fp16"])
    add("--device", default="cpu")
    add("--kv-cache-mb", type=int, help="KV pool size (default: the engine's)")


# What each training mode reads; any other given flag is refused. The data mode reads _data_flags (given
# before or after 'data': the same flag names one setting).
COMMON = {"teacher", "out", "data", "block_size", "lora_rank", "steps", "minutes", "lr", "seed", "init_from",
          "batch_size", "max_len", "save_every", "mask_token"}
USES = {
    "train": COMMON | {"student_init", "mask_ratio", "full", "lora_alpha", "lora_dropout", "fresh_optimizer",
                       "no_optimizer_state", "hard_weight", "chat", "save", "dtype", "device"},
    "ar-preserving": COMMON | {"ar_preserving", "anchors", "adapt", "fresh_optimizer", "no_optimizer_state",
                               "dtype"},
}
AR_ONLY = ("hard_weight", "mask_token")  # the distillation mode (LLaDA/Dream teacher) has no use for them


def _defaults(flags) -> dict:
    add = _Flags(argparse.ArgumentParser())
    flags(add)
    return add.defaults


def add_refurbish_arguments(p: argparse.ArgumentParser) -> None:
    _train_flags(_Flags(p))
    sub = p.add_subparsers(dest="action", metavar="data")
    _data_flags(_Flags(sub.add_parser("data", help="self-distillation: the teacher answers a prompt set "
                                                   "through our engine")))


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(p, EngineConfig, include=MODEL_FIELDS, defaults={"dtype": "fp32"}, required=("model",))
    add_dataclass_arguments(p, EvalConfig, required=("prompts",))
    p.add_argument("--kv-cache-mb", type=int, default=256, help="KV pool of each of the two engines")
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _refuse(given, allowed, mode: str) -> None:
    extra = sorted(set(given) - set(allowed), key=list(given).index)
    if extra:
        raise ValueError(f"{mode} does not use {', '.join(map(_flag, extra))}")


def _require(opts: dict, names) -> None:
    missing = [_flag(n) for n in names if not opts.get(n)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required")


def _given(args, flags) -> dict:
    return {k: getattr(args, k) for k in _defaults(flags) if hasattr(args, k)}


def _train_config(opts: dict):
    from .trainer import TrainConfig

    return TrainConfig(
        teacher=opts["teacher"], out=opts["out"], data=opts["data"], student_init=opts["student_init"],
        block_size=opts["block_size"], mask_lo=opts["mask_ratio"][0], mask_hi=opts["mask_ratio"][1],
        lora_rank=None if opts["full"] else opts["lora_rank"], lora_alpha=opts["lora_alpha"],
        lora_dropout=opts["lora_dropout"], steps=opts["steps"], minutes=opts["minutes"], lr=opts["lr"],
        seed=opts["seed"], init_from=opts["init_from"], load_optimizer=not opts["fresh_optimizer"],
        save_optimizer=not opts["no_optimizer_state"], batch_size=opts["batch_size"], max_len=opts["max_len"],
        save_every=opts["save_every"], hard_weight=opts["hard_weight"], mask_token=opts["mask_token"],
        chat=opts["chat"], save=opts["save"], dtype=opts["dtype"], device=opts["device"])


def _run_train(opts: dict, given: dict) -> int:
    from d2f.engine.models.checkpoint import read_spec

    from .trainer import Refurbisher

    _require(opts, ("teacher", "out", "data"))
    if given.get("fresh_optimizer") and not opts["init_from"]:
        raise ValueError("--fresh-optimizer goes with --init-from")
    ar_only = [k for k in AR_ONLY if k in given]
    if ar_only and read_spec(opts["teacher"])[0].family not in ("llama", "qwen2"):
        raise ValueError(f"{', '.join(map(_flag, ar_only))} apply to an AR (Llama/Qwen2) teacher only")
    cfg = _train_config(opts)
    trainer = Refurbisher(cfg)
    code = trainer.run()
    print(f"saved {trainer.save_mode} output at step {trainer.step} to {cfg.out}", file=sys.stderr)
    return code


def _run_ar_preserving(opts: dict) -> int:
    from d2f.engine.models.checkpoint import read_spec
    from d2f.engine.tokenizer import load_tokenizer

    from . import arpreserve
    from .student import choose_mask_token

    _require(opts, ("teacher", "out", "data"))
    if opts["fresh_optimizer"] and not opts["init_from"]:
        raise ValueError("--fresh-optimizer goes with --init-from")
    mask, new_row = choose_mask_token(read_spec(opts["teacher"])[0], load_tokenizer(opts["teacher"]),
                                      opts["mask_token"])
    if new_row:  # the base stays as it is: an existing id is fed, its input vector is the adapter's
        raise ValueError("--ar-preserving needs --mask-token auto or an existing token id, not a new row")
    block = opts["block_size"]
    cfg = arpreserve.Config(teacher=opts["teacher"], data=opts["data"], out=opts["out"], block_size=block,
                            block_sizes=tuple(sorted({max(2, block // 2), block})), mask_token=mask,
                            rank=opts["lora_rank"], lr=opts["lr"] or 1e-3, steps=opts["steps"],
                            minutes=opts["minutes"], batch_size=opts["batch_size"], anchors=opts["anchors"],
                            max_len=opts["max_len"], save_every=opts["save_every"], seed=opts["seed"],
                            init_from=opts["init_from"], adapt=tuple(opts["adapt"].split(",")),
                            load_optimizer=not opts["fresh_optimizer"],
                            save_optimizer=not opts["no_optimizer_state"], dtype=opts["dtype"])
    return arpreserve.train(cfg)


def _run_data(args) -> int:
    from .selfdistill import DataConfig, run_data

    given = _given(args, _data_flags)
    _refuse(_given(args, _train_flags), given, "d2f refurbish data")
    opts = _defaults(_data_flags) | given
    _require(opts, ("teacher", "prompts", "out"))
    return run_data(DataConfig(**opts))


def _run_eval(args) -> int:
    from d2f.engine.models.registry import AR_DEFAULT, D2F_DEFAULT, resolve_model

    from .eval import run_eval

    engine = engine_config(args, kv_cache_memory=args.kv_cache_mb << 20)
    reference = resolve_model(args.reference_model) if args.reference_model else None
    gguf = args.gguf
    embedded = args.reference_model == AR_DEFAULT or (args.reference_model is None and args.model == D2F_DEFAULT)
    if gguf is None and embedded:  # the embedded model is judged against itself as AR: its own GGUF
        from d2f.engine.models.default_model import gguf_path

        gguf = str(gguf_path())
    return run_eval(from_args(EvalConfig, args, engine=engine, reference_model=reference, gguf=gguf),
                    args.plot, args.json)


def run(args) -> int:
    from d2f.engine.models.families import CheckpointError

    from .data import DataError

    try:
        if args.command == "eval":
            return _run_eval(args)
        if getattr(args, "action", None) == "data":
            return _run_data(args)
        given = _given(args, _train_flags)
        mode = "ar-preserving" if given.get("ar_preserving") else "train"
        _refuse(given, USES[mode], "--ar-preserving" if mode == "ar-preserving" else "d2f refurbish")
        opts = _defaults(_train_flags) | given
        return _run_ar_preserving(opts) if mode == "ar-preserving" else _run_train(opts, given)
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
