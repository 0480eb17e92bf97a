"""Quality measures of generated answers: reference NLL, distinct-2, EOS share, agreement with a reference."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distinct2(answers: list[list[int]]) -> float | None:
    """Mean over answers of distinct bigrams / bigrams (1.0 = no repeated bigram; loops drive it to 0)."""
    scores = []
    for a in answers:
        grams = list(zip(a, a[1:]))
        if grams:
            scores.append(len(set(grams)) / len(grams))
    return sum(scores) / len(scores) if scores else None


def agreement(answers: list[list[int]], references: list[list[int]]) -> tuple[float, float]:
    """(position-wise token agreement / the longer length, share of identical answers), averaged."""
    per, exact = [], 0
    for a, r in zip(answers, references):
        longest = max(len(a), len(r))
        per.append(1.0 if longest == 0 else sum(x == y for x, y in zip(a, r)) / longest)
        exact += a == r
    n = max(len(per), 1)
    return sum(per) / n, exact / n


@torch.no_grad()
def reference_nll(model, prompts: list[list[int]], answers: list[list[int]], device: str = "cpu") -> float | None:
    """Per-token NLL of the answers under a causal reference model, each answer read after its own prompt.

    Ids the reference does not know (a mask row the D2F model added) count as its token 0, so such output
    is scored as the junk it is rather than crashing the evaluation.
    """
    total, count = 0.0, 0
    vocab = model.config.vocab_size
    for prompt, answer in zip(prompts, answers):
        if not answer:
            continue
        ids = torch.tensor([[t if t < vocab else 0 for t in prompt + answer]], device=device)
        logits = model(ids).logits[0, len(prompt) - 1:-1].float()
        total += float(F.cross_entropy(logits, ids[0, len(prompt):], reduction="sum"))
        count += len(answer)
    return total / count if count else None
