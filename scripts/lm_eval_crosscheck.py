"""The lm-eval smoke run's scores, and its multiple-choice loglikelihoods recomputed by transformers.

    python scripts/lm_eval_crosscheck.py MODEL_DIR OUTDIR

OUTDIR is lm_eval_smoke.sh's: gen/ and mc/ hold lm-eval's results and samples (--log_samples). Each
multiple-choice (context, continuation) pair is tokenized as lm-eval's local-completions does it (trailing
spaces of the context move to the continuation; the whole string is encoded without special tokens and the
context's tokens split off), scored by transformers' LlamaForCausalLM in fp32 on the same weights the server
loaded, and compared with what lm-eval got from the server: every loglikelihood within 1e-3, and the same
acc and acc_norm. Exits 1 if not.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaForCausalLM

TOLERANCE = 1e-3


def latest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    if not found:
        sys.exit(f"no {pattern} under {folder}")
    return found[-1]


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihoods(model, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """One batched forward over a question's choices, padded on the right (a causal model's earlier
    positions never see the padding)."""
    width = max(len(c) + len(x) for c, x in pairs)
    ids = torch.tensor([c + x + [0] * (width - len(c) - len(x)) for c, x in pairs])
    logits = model(ids).logits.float()
    out = []
    for row, (ctx, cont) in zip(logits, pairs):
        lp = row[len(ctx) - 1:len(ctx) + len(cont) - 1].log_softmax(-1)
        out.append(lp.gather(-1, torch.tensor(cont)[:, None]).sum().item())
    return out


def main(model_dir: str, out: str) -> int:
    out = Path(out)
    gen = json.loads(latest(out / "gen", "results_*.json").read_text())["results"]["d2f_smoke_gen"]
    mc = json.loads(latest(out / "mc", "results_*.json").read_text())["results"]["d2f_smoke_mc"]
    print(f"d2f_smoke_gen (generate_until, local-chat-completions): contains_answer = {gen['contains_answer,none']:.3f}")
    print(f"d2f_smoke_mc (multiple_choice, local-completions): acc = {mc['acc,none']:.3f}, "
          f"acc_norm = {mc['acc_norm,none']:.3f}")

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    worst, pairs, acc, acc_norm = 0.0, 0, [], []
    samples = [json.loads(line) for line in latest(out / "mc", "samples_d2f_smoke_mc_*.jsonl").read_text().splitlines()]
    for s in samples:
        args = [s["arguments"][f"gen_args_{i}"] for i in range(len(s["arguments"]))]
        ours = [float(r[0][0]) for r in s["resps"]]
        ref = loglikelihoods(model, [encode_pair(tok, a["arg_0"], a["arg_1"]) for a in args])
        worst = max(worst, *(abs(a - b) for a, b in zip(ours, ref)))
        pairs += len(ref)
        gold = int(s["doc"]["answer"])
        acc.append(float(max(range(len(ref)), key=ref.__getitem__) == gold))
        norm = [ll / len(choice) for ll, choice in zip(ref, s["doc"]["choices"])]  # lm-eval: by characters
        acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == gold))
    ref_acc, ref_norm = sum(acc) / len(acc), sum(acc_norm) / len(acc_norm)
    print(f"transformers on the same weights (fp32): acc = {ref_acc:.3f}, acc_norm = {ref_norm:.3f}; "
          f"max |loglikelihood difference| over {pairs} (context, choice) pairs = {worst:.2e}")
    ok = worst <= TOLERANCE and abs(ref_acc - mc["acc,none"]) < 1e-9 and abs(ref_norm - mc["acc_norm,none"]) < 1e-9
    print("cross-check:", "agrees within 1e-3" if ok else "DISAGREES")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
