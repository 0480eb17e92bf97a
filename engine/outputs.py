"""What the engine hands out: per-request outputs and per-step stats (plain dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sequence import DraftStats


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
