"""What the engine hands out: per-request outputs and per-step stats (plain dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass

from .logprobs import TokenLogprob


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]   # final tokens since the previous output (whole committed blocks)
    token_ids: list[int]       # every final answer token so far
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" when finished
    num_forwards: int          # model forwards this request took part in
    num_prompt_tokens: int
    error: str | None = None   # a message safe to show the client when finish_reason == "error"
    queue_seconds: float | None = None  # arrival to first forward
    # When asked (DecodeParams.logprobs / prompt_logprobs): one entry per token_ids token, then the stop
    # token's when one ended the answer; and one per prompt token from the second on (complete in every
    # output: the prompt is scored before any answer token is final).
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass(slots=True)
class StepStats:
    running: int = 0
    waiting: int = 0
    pages_used: int = 0
    pages_free: int = 0
    tokens_in_forward: int = 0
    tokens_committed: int = 0
    num_seqs_in_forward: int = 0
    preemptions_total: int = 0
    forward_seconds: float = 0.0
    step_seconds: float = 0.0
