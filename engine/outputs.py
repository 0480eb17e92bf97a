"""What the engine hands out: per-request outputs, per-forward step records and per-step stats (plain
dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .logprobs import TokenLogprob

if TYPE_CHECKING:
    from .sequence import DraftStats


@dataclass(slots=True)
class StepRecord:
    """What one forward did to one request, made only for a request that asked for it
    (DecodeParams.record_steps). Positions count from the answer's first token."""
    forward: int                   # the request's forwards so far, this one included
    blocks: list[tuple[int, int]]  # [start, end) of each answer block in flight in this forward, in order
    masked: list[list[int]] = field(default_factory=list)  # per block: its positions still masked after it
    committed: list[tuple[int, int]] = field(default_factory=list)  # (position, token id) made final by it
    # Filled by an algorithm that drafts and verifies (the others leave them empty): (position, token id)
    # of the drafts this forward proposed, and of earlier drafts it accepted (those are in committed too)
    # or rejected.
    proposed: list[tuple[int, int]] = field(default_factory=list)
    accepted: list[tuple[int, int]] = field(default_factory=list)
    rejected: list[tuple[int, int]] = field(default_factory=list)


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
    # Requests that asked for steps: a record per forward since the previous output. Such a request also
    # gets an output after a forward that finished no block (new_token_ids empty).
    steps: list[StepRecord] | None = None
    draft_stats: DraftStats | None = None  # exact mode, on the final output: drafts checked/accepted by offset


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
