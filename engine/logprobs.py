"""Log-probabilities of tokens, from the fp32 logits of the forward that produced them.

The distribution is the model's after temperature and before top-k/top-p filtering (vLLM's processed-
logits choice): log_softmax(logits / T), with T = 1 for greedy requests (temperature 0), so a greedy
request reports the model's own log-probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_LOGPROBS = 20  # most alternatives one position reports (OpenAI's chat limit; completions allow 5)


@dataclass(slots=True)
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]  # the k most likely tokens and their log-probabilities, best first


def token_logprobs(logits: torch.Tensor, tokens: list[int], temperature: float, k: int) -> list[TokenLogprob]:
    """fp32 logits [n, V] whose row i gave tokens[i] -> one TokenLogprob per row, with k alternatives."""
    if not tokens:
        return []
    if not bool(torch.isfinite(logits).all()):
        raise FloatingPointError("non-finite logits")
    if temperature > 0:
        logits = logits / temperature
    lp = logits.log_softmax(-1)
    chosen = lp.gather(-1, torch.tensor(tokens, dtype=torch.long, device=lp.device)[:, None]).squeeze(-1).tolist()
    if k:
        values, ids = lp.topk(k, dim=-1)
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in tokens]
    return [TokenLogprob(t, c, top) for t, c, top in zip(tokens, chosen, tops)]
