"""One request's state: its tokens, its answer blocks, its KV pages and its counters."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .logprobs import TokenLogprob
from .outputs import StepRecord

if TYPE_CHECKING:
    from .decoding import Algorithm


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"


@dataclass(slots=True)
class Block:
    start: int  # absolute position of the first token
    size: int
    masked: int
    fully_activated: bool = False

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def decoded_ratio(self) -> float:
        return (self.size - self.masked) / self.size


@dataclass(slots=True)
class Knobs:
    """A request's resolved decoding knobs (model defaults filled in)."""
    block_size: int
    tau_add: float
    tau_act: float
    tau_conf: float
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop_ids: frozenset[int]
    logprobs: int | None = None         # record answer tokens' log-probabilities, with k alternatives
    prompt_logprobs: int | None = None  # score the prompt (causal prompts only), with k alternatives
    exact: bool = False  # drafts verified by the AR rows (engine/decoding/verified.py)
    draft_width: int = 1  # exact mode, greedy: the drafter's top tokens run for the first draft


@dataclass(slots=True)
class DraftStats:
    """Exact mode's drafts by offset (index 0 = offset 1): drafts checked, and those in an accepted prefix."""
    proposed: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_ids: list[int]
    knobs: Knobs
    mask_id: int
    generator: torch.Generator | None = None
    algorithm: Algorithm | None = None  # the decoding rules this request runs under (set by the engine)
    order: int = 0               # admission order (FIFO); preemption takes the highest
    arrival: float = field(default_factory=time.monotonic)
    admitted: float | None = None  # first time the scheduler gave it a forward
    status: Status = Status.WAITING
    tokens: list[int] = field(init=False)
    # True where a position still holds an undecoded mask (a committed token may equal mask_id).
    is_masked: list[bool] = field(init=False)
    blocks: list[Block] = field(default_factory=list)
    cached_len: int = 0          # positions [0, cached_len) hold final K/V in the cache
    pages: list[int] = field(default_factory=list)
    eos_seen: bool = False
    num_forwards: int = 0
    emitted: int = 0             # answer tokens already handed out
    # Blocks [0, num_done) are done: no masks and no earlier active block (the spec's to_cache); a done
    # block is in_cache once cached_len has passed its end. Blocks finish strictly in order.
    num_done: int = 0
    scanned: int = 0             # final answer tokens already checked for stop tokens
    # Shifted-logit models: hidden state at cached_len - 1, which predicts the first window token.
    last_hidden: torch.Tensor | None = None
    # When knobs.logprobs is set: each committed answer position's log-probability, recorded at commit time
    # by the decoding algorithm (Algorithm.record_logprobs) from the distribution that committed it.
    logprobs: dict[int, TokenLogprob] = field(default_factory=dict)
    # When knobs.prompt_logprobs is set: prompt tokens 1, 2, ... scored so far, in order.
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Requests that asked for steps (else None): records not yet handed out, and the record of the forward
    # being decoded, on which an algorithm that drafts notes its drafts.
    steps: list[StepRecord] | None = None
    record: StepRecord | None = None
    # Exact mode: proposed tokens for positions [end, end + len(drafts)), not yet verified, the drafter's
    # distributions they were sampled from (sampling only), and the acceptance counts.
    drafts: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    draft_stats: DraftStats | None = None
    # Greedy exact mode with draft_width > 1: the runner-up tokens for drafts[0], each a candidate row of
    # the next forward; `layout` is that forward's layout (first index, drafts, candidates, masks, fallback
    # masks; set before it, cleared after).
    draft_alts: list[int] = field(default_factory=list)
    layout: tuple[int, int, int, int, int] | None = None

    def __post_init__(self):
        self.tokens = list(self.prompt_ids)
        self.is_masked = [False] * len(self.tokens)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def end(self) -> int:
        return len(self.tokens)

    @property
    def answer(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    def max_blocks(self) -> int:
        k = self.knobs
        return -(-k.max_tokens // k.block_size)

    def first_active(self) -> int:
        """Index of the earliest block not yet done (len(blocks) if none)."""
        return self.num_done

    def finished_prefix(self) -> int:
        """Answer tokens that are final and contiguous from the answer's start."""
        if self.num_done == len(self.blocks):
            return self.end - self.prompt_len
        blk = self.blocks[self.num_done]  # done blocks have no masks, and the next one would be done too
        if not blk.masked:
            return blk.end - self.prompt_len
        return blk.start - self.prompt_len + self.is_masked[blk.start:blk.end].index(True)
