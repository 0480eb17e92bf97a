"""Admission, continuous batching and preemption: which windows go into the next forward.

The scheduler only plans: it reads sequences and moves them between queues and pages, but their blocks
and tokens change only when the engine executes a Work (the decoding algorithm's begin and step)."""
from __future__ import annotations

import time
from collections import deque

from .config import EngineConfig
from .kv_cache import PagePool
from .runner import Work
from .sequence import Sequence, Status

# A request scoring its prompt gets fp32 logits for every prompt row: its prefill goes in chunks of at most
# this many tokens, so those logits stay small (512 x a 150k vocabulary = 300 MB).
SCORE_CHUNK = 512


class Scheduler:
    def __init__(self, config: EngineConfig, pool: PagePool, prompt_causal: bool, shift_logits: bool):
        self.config = config
        self.pool = pool
        self.prompt_causal = prompt_causal
        self.shift_logits = shift_logits
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Finished or aborted: forget it and free its pages at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.release(seq.pages)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _plan(self, seq: Sequence, budget: int) -> tuple[int, bool] | None:
        """(window end, does the algorithm append before the forward?) for this iteration, or None if it
        does not fit the budget. The sequence's own algorithm says what it appends."""
        grow = seq.algorithm.growth(seq)
        if seq.end == seq.prompt_len and seq.cached_len < seq.prompt_len:  # still prefilling the prompt
            rest = seq.prompt_len - seq.cached_len
            if seq.knobs.prompt_logprobs is not None:  # only causal prompts are scored: they chunk exactly
                budget = min(budget, SCORE_CHUNK)
            if not seq.knobs.max_tokens:  # scoring the prompt alone: no answer block ever
                grow = 0
            if rest + grow <= budget:
                return seq.prompt_len + grow, grow > 0
            if self.prompt_causal and budget > 0:
                return seq.cached_len + min(rest, budget), False  # exact: a causal prompt chunks
            return None
        end = seq.end + grow
        return (end, grow > 0) if end - seq.cached_len <= budget else None

    def _make_work(self, seq: Sequence, end: int, add: bool) -> Work:
        if seq.end == seq.prompt_len and not add:  # a prompt chunk: all of it is final
            return Work(seq, seq.cached_len, end, end, [], score=_score(seq, end))
        end, commit_upto, predict = seq.algorithm.window(seq, end, add, self.shift_logits)
        return Work(seq, seq.cached_len, end, commit_upto, predict, add, _score(seq, end))

    def _preempt(self, seq: Sequence) -> None:
        """Free a sequence's KV; it keeps its decoding state and recomputes its prefix when resumed."""
        self.running.remove(seq)
        self.pool.release(seq.pages)
        seq.cached_len = 0
        seq.last_hidden = None
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def schedule(self) -> list[Work]:
        works: list[Work] = []
        budget = self.config.max_num_batched_tokens
        for seq in list(self.running):  # oldest first
            if seq.status is not Status.RUNNING:
                continue  # preempted earlier in this loop
            plan = self._plan(seq, budget if works else 1 << 62)
            if plan is None:
                continue
            end, add = plan
            while not self.pool.grow(seq.pages, end):
                victim = self.running[-1]  # newest; never one already scheduled (those are older)
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status is not Status.RUNNING:
                continue
            works.append(self._make_work(seq, end, add))
            budget -= end - seq.cached_len
        while self.waiting and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            plan = self._plan(seq, budget if works else 1 << 62)
            if plan is None:
                break  # FIFO: nobody overtakes the head of the queue
            end, add = plan
            if not self.pool.grow(seq.pages, end):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            if seq.admitted is None:
                seq.admitted = time.monotonic()
            self.running.append(seq)
            self.running.sort(key=lambda s: s.order)  # a resumed sequence goes back to its place
            works.append(self._make_work(seq, end, add))
            budget -= end - seq.cached_len
        return works


def _score(seq: Sequence, end: int) -> list[int]:
    """Prompt positions in the window [cached_len, end) whose row scores the next prompt token, for a request
    that scores its prompt; rows scored before a preemption are not scored again."""
    if seq.knobs.prompt_logprobs is None:
        return []
    return list(range(max(seq.cached_len, len(seq.prompt_logprobs)), min(end, seq.prompt_len - 1)))
