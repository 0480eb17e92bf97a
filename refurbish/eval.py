"""`d2f eval`: the speed/quality curve of a D2F model against its AR reference, on the same engine.

Per knob setting: tokens per forward, tokens/s (whole prompt set batched), the reference model's per-token NLL
of the text (fluency), distinct-2 (repetition), the share of answers ending in EOS, and agreement with the
reference's greedy answer. The reference run as AR (block size 1) is the point every setting is compared to.
Exact mode (AR-preserving models) also reports its drafts' acceptance per offset and checks that every answer
is the evaluated model's own AR answer.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from d2f.engine import llama_cpp
from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.params import EXACT, SPEED_PRESETS, DecodeParams, speed_to_taus
from d2f.engine.timing import timed_generate
from d2f.engine.tokenizer import load_tokenizer

from . import metrics
from .data import load_prompts
from .hfmodel import load_hf


@dataclass
class EvalConfig:
    engine: EngineConfig  # the D2F model; the reference runs with the same dtype, device and KV pool, unquantized
    prompts: str = field(metadata={"help": "held-out prompts: text (one a line) or JSONL"})
    knobs: str | None = field(default=None, metadata={
        "help": "comma-separated settings: a number sets tau_act = tau_conf; quality|balanced|fast; "
                "tau_conf/tau_act/block_size, e.g. 0.9/0.95/32; exact, exact/block_size or "
                "exact/block_size/draft_width (AR-preserving models) "
                "(default: exact,0.95,0.9,0.85 on an AR-preserving model, else 0.95,0.9,0.85)"})
    reference_model: str | None = field(default=None, metadata={
        "help": "AR model for NLL, agreement and the AR point (default: the teacher recorded in the D2F checkpoint)"})
    max_tokens: int = field(default=64, metadata={"help": "tokens generated per prompt"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N prompts"})
    chat: bool = field(default=False, metadata={"help": "wrap text prompts in the tokenizer's chat template"})
    single_stream: int = field(default=0, metadata={
        "help": "also time the first N prompts one at a time (single-stream tokens/s)", "metavar": "N"})
    gguf: str | None = field(default=None, metadata={
        "help": "with --single-stream: llama.cpp's single-stream tokens/s on this GGUF of the reference, when "
                "llama-cpp-python is importable (default: the embedded model's own GGUF when the reference is "
                "the embedded model)"})


DEFAULT_KNOBS = "0.95,0.9,0.85"


def parse_knobs(text: str) -> list[dict]:
    """'0.95,0.9' | 'quality,fast' | '0.9/0.95/32' (tau_conf/tau_act/block_size) | 'exact' | 'exact/4' |
    'exact/2/4' (block_size/draft_width) -> DecodeParams fields."""
    out = []
    for item in [x.strip() for x in text.split(",") if x.strip()]:
        if item.split("/")[0] == EXACT:
            out.append(_exact_knob(item))
            continue
        if item in SPEED_PRESETS:
            conf, act = speed_to_taus(SPEED_PRESETS[item])
            out.append({"tau_conf": conf, "tau_act": act})
            continue
        parts = item.split("/")
        try:
            knob = {"tau_conf": float(parts[0]), "tau_act": float(parts[1] if len(parts) > 1 else parts[0])}
            if len(parts) > 2:
                knob["block_size"] = int(parts[2])
        except ValueError:
            raise ValueError(f"--knobs entry {item!r}: expected a number, a preset or tau_conf/tau_act/block") from None
        if len(parts) > 3:
            raise ValueError(f"--knobs entry {item!r}: at most tau_conf/tau_act/block_size")
        out.append(knob)
    if not out:
        raise ValueError("--knobs is empty")
    return out


def _exact_knob(item: str) -> dict:
    parts = item.split("/")
    if len(parts) == 1:
        return {"exact": True}
    if len(parts) in (2, 3) and all(x.isdigit() and int(x) >= 1 for x in parts[1:]):
        knob = {"exact": True, "block_size": int(parts[1])}
        return knob | ({"draft_width": int(parts[2])} if len(parts) == 3 else {})
    raise ValueError(f"--knobs entry {item!r}: expected exact, exact/block_size or exact/block_size/draft_width")


def find_reference(model: str, lora: str | None) -> str | None:
    """The teacher a refurbish run recorded (d2f.json beside the weights or the adapter)."""
    for d in (lora, model):
        if d and (Path(d) / "d2f.json").is_file():
            ref = json.loads((Path(d) / "d2f.json").read_text()).get("refurbished_from")
            if ref:
                return ref
    return None


def single_stream(runs: list[tuple[Engine, DecodeParams]], prompts) -> list[float | None]:
    """Tokens/s with one request at a time for each (engine, params): the latency view, where D2F's tokens
    per forward pay off (in a big batch the forward is compute-bound and extra window rows cost what they
    compute). Prompt i runs under every setting before prompt i + 1 does, in an order that rotates, so a
    slow minute of a shared machine lands on all settings alike: timed setting after setting, one setting
    of the same knobs measured 30.0 and 34.8 tokens/s in one run on a 2-core VM."""
    tokens, seconds = [0] * len(runs), [0.0] * len(runs)
    for i, prompt in enumerate(prompts):
        for j in range(len(runs)):
            k = (i + j) % len(runs)
            engine, params = runs[k]
            timed = timed_generate(engine, [prompt], params)
            tokens[k] += timed.tokens
            seconds[k] += timed.seconds
    return [round(n / s, 2) if s else None for n, s in zip(tokens, seconds)]


def run_setting(engine: Engine, prompts, params: DecodeParams, ref_model, ref_answers=None) -> dict:
    timed = timed_generate(engine, prompts, params)
    outs, seconds, tokens, forwards = timed.outputs, timed.seconds, timed.tokens, timed.forwards
    answers = [o.token_ids for o in outs]
    eos = engine.spec.eos_token_ids[:1]
    # The EOS itself is part of the text the reference scores: ending well is part of fluency.
    scored = [a + eos if o.finish_reason == "stop" else a for a, o in zip(answers, outs)]
    row = {"tokens": tokens, "forwards": forwards, "seconds": round(seconds, 4),
           "tokens_per_forward": round(tokens / forwards, 4) if forwards else None,
           "tokens_per_second": round(tokens / seconds, 2) if seconds else None,
           "reference_nll": _round(metrics.reference_nll(ref_model, prompts, scored)),
           "distinct2": _round(metrics.distinct2(answers)),
           "eos_rate": round(sum(o.finish_reason == "stop" for o in outs) / len(outs), 4)}
    if ref_answers is not None:
        agree, exact = metrics.agreement(answers, ref_answers)
        row.update(agreement=round(agree, 4), exact_match=round(exact, 4))
    if params.exact:
        row["acceptance"] = acceptance(outs)
    return row | {"answers": answers}


def acceptance(outs) -> list[dict]:
    """Exact mode's drafts by offset 1..B-1, summed over the answers: drafts checked, drafts committed (they and
    every draft before them matched the AR token), and the share committed."""
    proposed, accepted = [], []
    for o in outs:
        stats = o.draft_stats
        for j, (p, a) in enumerate(zip(stats.proposed, stats.accepted)):
            if j == len(proposed):
                proposed.append(0)
                accepted.append(0)
            proposed[j] += p
            accepted[j] += a
    return [{"offset": j + 1, "proposed": p, "accepted": a, "rate": round(a / p, 4) if p else None}
            for j, (p, a) in enumerate(zip(proposed, accepted))]


def _round(x):
    return None if x is None else round(x, 4)


def evaluate(cfg: EvalConfig) -> dict:
    model, lora = cfg.engine.model, cfg.engine.lora
    reference = cfg.reference_model or find_reference(model, lora)
    if not reference:
        raise ValueError("--reference-model is needed (the checkpoint records no teacher)")
    engine = Engine(cfg.engine)
    # The reference is the exact model: unquantized whatever --quantization does to the evaluated one.
    ar_engine = Engine(replace(cfg.engine, model=reference, lora=None, quantization="none"))
    if not ar_engine.spec.shift_logits:
        raise ValueError(f"{reference}: the reference must be a shifted-logit (AR-decodable) model, not LLaDA")
    tok = load_tokenizer(model) or load_tokenizer(reference)
    prompts = load_prompts(cfg.prompts, tok, cfg.chat)[:cfg.limit or None]
    _, _, ref_model = load_hf(reference)
    ref_model.eval()
    # First calls pay for allocation and kernel selection; do not bill them to the first setting.
    for e, block in ((engine, None), (ar_engine, 1)):
        e.generate(prompts[:1], DecodeParams(max_tokens=2, block_size=block))
    single = cfg.single_stream
    ar_params = DecodeParams(max_tokens=cfg.max_tokens, block_size=1)
    ar = run_setting(ar_engine, prompts, ar_params, ref_model)
    ref_answers = ar.pop("answers")
    ar.update(knobs={"block_size": 1}, agreement=1.0, exact_match=1.0)
    settings, runs = [], [(ar_engine, ar_params)]
    own_ar = None  # the evaluated model decoded as AR: what exact mode must reproduce token for token
    default = f"{EXACT},{DEFAULT_KNOBS}" if engine.spec.ar_preserving else DEFAULT_KNOBS
    for knob in parse_knobs(cfg.knobs or default):
        params = DecodeParams(max_tokens=cfg.max_tokens, **knob)
        row = run_setting(engine, prompts, params, ref_model, ref_answers)
        runs.append((engine, params))
        answers = row.pop("answers")
        if params.exact:
            if own_ar is None:
                own_ar = [o.token_ids for o in engine.generate(prompts, DecodeParams(max_tokens=cfg.max_tokens,
                                                                                     block_size=1))]
            row["ar_mismatches"] = sum(a != b for a, b in zip(answers, own_ar))
        full = dict(knob, block_size=knob.get("block_size", engine.spec.block_size))
        if params.exact:
            full["draft_width"] = knob.get("draft_width", engine.spec.draft_width)
        row = {"knobs": full, **row}
        if ar["tokens_per_second"] and row["tokens_per_second"]:
            row["speedup_vs_ar"] = round(row["tokens_per_second"] / ar["tokens_per_second"], 3)
        if tok is not None and answers:
            row["sample"] = tok.decode(answers[0], skip_special_tokens=True)[:200]
        settings.append(row)
    if single:
        rates = single_stream(runs, prompts[:single])
        for row, rate in zip([ar] + settings, rates):
            row["single_stream_tokens_per_second"] = rate
        for row in settings:
            if ar["single_stream_tokens_per_second"] and row["single_stream_tokens_per_second"]:
                row["single_stream_speedup_vs_ar"] = round(row["single_stream_tokens_per_second"]
                                                           / ar["single_stream_tokens_per_second"], 3)
    report = {"model": model, "lora": lora, "reference_model": reference, "num_prompts": len(prompts),
              "max_tokens": cfg.max_tokens, "ar": ar, "settings": settings}
    if single and cfg.gguf:  # the same prompts, one at a time, through llama.cpp: the yardstick's point
        report["llama_cpp"] = llama_cpp.tok_s(cfg.gguf, [list(p) for p in prompts[:single]], cfg.max_tokens,
                                              torch.get_num_threads(), runs=1)
    return report


def run_eval(cfg: EvalConfig, plot: str | None = None, as_json: bool = False) -> int:
    """0, or 1 when an exact-mode answer differs from the model's own AR answer (exact mode is broken)."""
    if plot and importlib.util.find_spec("matplotlib") is None:
        # Refused before the run, not after it: an eval takes minutes to hours and its report would be lost.
        raise ValueError("--plot needs matplotlib (pip install 'd2f-serve[plot]')")
    torch.manual_seed(0)
    report = evaluate(cfg)
    if plot:
        from .plot import plot_curve

        plot_curve(report, plot)
    mismatches = sum(s.get("ar_mismatches", 0) for s in report["settings"])
    if mismatches:
        print(f"d2f eval: {mismatches} exact-mode answers differ from the model's own AR answers", file=sys.stderr)
    if as_json:
        print(json.dumps(report))
        return 1 if mismatches else 0
    cols = ("tokens_per_forward", "tokens_per_second", "reference_nll", "distinct2", "eos_rate", "agreement")
    if cfg.single_stream:
        cols += ("single_stream_tokens_per_second",)
    print(f"{'setting':<24}" + "".join(f"{c:>20}" for c in cols))
    rows = [("AR (reference)", report["ar"])] + [(_label(s["knobs"]), s) for s in report["settings"]]
    for name, row in rows:
        print(f"{name:<24}" + "".join(f"{'-' if row.get(c) is None else row[c]:>20}" for c in cols))
    lc = report.get("llama_cpp")
    if lc and "tok_s" in lc:
        print(f"llama.cpp on the same prompts, single stream: {lc['tok_s']} tokens/s")
    for s in report["settings"]:
        if "acceptance" in s:
            rates = " ".join(f"{a['rate']}" for a in s["acceptance"])
            print(f"{_label(s['knobs'])}: drafts accepted per offset 1..{len(s['acceptance'])}: {rates or '-'}; "
                  f"answers differing from AR: {s['ar_mismatches']}")
    if plot:
        print(f"plot written to {plot}", file=sys.stderr)
    return 1 if mismatches else 0


def _label(knobs: dict) -> str:
    if knobs.get("exact"):
        width = knobs.get("draft_width", 1)
        return f"exact B{knobs['block_size']}" + (f" W{width}" if width > 1 else "")
    return f"conf {knobs['tau_conf']} act {knobs['tau_act']} B{knobs['block_size']}"
