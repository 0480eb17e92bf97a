"""The generic part of block decoding, shared by every algorithm: block lifecycle, sampling, the
commit loop, finishing and emitting. No model code here.

One iteration = one forward: begin (add -> activate) -> forward (elsewhere) -> step (commit -> finish).
A subclass decides which masked rows of a block one forward commits (`select`); one that decodes
differently (drafting with verification, verified.py) overrides the planning, `begin`/`step` and emitting;
during its step, it notes its drafts on `seq.record` (a StepRecord) when that is not None.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..logprobs import token_logprobs
from ..sequence import Block, Knobs, Sequence

if TYPE_CHECKING:
    from ..runner import Work


class Algorithm:
    # ---- planning (pure: the scheduler calls these and must not change a sequence) ------------
    def wants_block(self, seq: Sequence) -> bool:
        """Add rule: room for another answer block, no EOS yet, and the last block far enough along."""
        if seq.eos_seen or len(seq.blocks) >= seq.max_blocks():
            return False
        ratio = seq.blocks[-1].decoded_ratio if seq.blocks else 1.0  # the prompt block is fully decoded
        return ratio >= seq.knobs.tau_add

    def growth(self, seq: Sequence) -> int:
        """Positions `begin` appends to the sequence before the next forward (a block of masks, or none)."""
        return seq.knobs.block_size if self.wants_block(seq) else 0

    def window(self, seq: Sequence, end: int, add: bool, shift_logits: bool) -> tuple[int, int, list[int]]:
        """(window end, commit_upto, predicted positions) of the next forward, whose planned end is `end`."""
        first = seq.first_active()
        commit_upto = max(seq.blocks[first - 1].end if first else seq.prompt_len, seq.cached_len)
        last = seq.blocks[-1] if not add else None  # None: the block to add, all masks, comes last
        last_size = seq.knobs.block_size if last is None else last.size
        if shift_logits and last_size == 1 and (last is None or last.masked) and end - 1 > seq.cached_len:
            # A masked one-token block at the end is a placeholder nobody reads: its token is predicted
            # from the position before it, and no other token may attend to it. AR decoding feeds 1 token.
            end -= 1
        return end, commit_upto, self.masked_positions(seq, add)

    def masked_positions(self, seq: Sequence, add: bool = False) -> list[int]:
        """Every still-masked position of the active blocks, in order: what this forward must predict;
        with add, also the block `add_block` is about to append (all masks)."""
        out = []
        for blk in seq.blocks[seq.first_active():]:
            if blk.masked:
                out.extend(p for p in range(blk.start, blk.end) if seq.is_masked[p])
        if add:
            out.extend(range(seq.end, seq.end + seq.knobs.block_size))
        return out

    # ---- executing a Work ---------------------------------------------------------------------
    def begin(self, work: Work) -> None:
        """Before the forward: append the planned block, then update activation."""
        seq = work.seq
        if work.add_block:
            self.add_block(seq)
        self.activate(seq)

    def add_block(self, seq: Sequence) -> None:
        size = seq.knobs.block_size
        seq.blocks.append(Block(start=seq.end, size=size, masked=size))
        seq.tokens.extend([seq.mask_id] * size)
        seq.is_masked.extend([True] * size)

    def activate(self, seq: Sequence) -> None:
        """Block b+1 becomes fully activated (sticky) once block b is decoded past tau_act."""
        prev_ratio = 1.0
        for blk in seq.blocks:
            if prev_ratio >= seq.knobs.tau_act:
                blk.fully_activated = True
            prev_ratio = blk.decoded_ratio

    def step(self, work: Work, logits: torch.Tensor) -> int:
        """After the forward: the window's final prefix joins the cache, then one decode step over the
        predicted rows' fp32 logits [len(work.predict), V]; returns tokens committed."""
        seq = work.seq
        seq.cached_len = work.commit_upto
        if not work.predict:
            return 0
        # One sum instead of an elementwise isfinite: NaN and inf survive a sum, and finite logits
        # (|x| < 1e4 in any sane model) cannot overflow fp32 when summed over a window's rows.
        if not bool(torch.isfinite(logits.sum())):
            raise FloatingPointError("non-finite logits")
        x0, conf = self.choose(logits, seq.knobs, seq.generator)
        n = self.commit(seq, work.predict, x0, conf)
        if seq.knobs.logprobs is not None:  # every predicted position was masked: unmasked now = committed now
            rows = [i for i, p in enumerate(work.predict) if not seq.is_masked[p]]
            self.record_logprobs(seq, [work.predict[i] for i in rows], logits[rows])
        self.finish_blocks(seq)
        return n

    @staticmethod
    def choose(logits: torch.Tensor, knobs: Knobs, generator: torch.Generator | None):
        """fp32 logits [n, V] -> (token ids [n], confidences [n]), confidence = p(x0) after filtering."""
        probs = Algorithm.probabilities(logits, knobs)
        if knobs.temperature > 0:
            x0 = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            conf = probs.gather(-1, x0[:, None]).squeeze(-1)
        else:
            conf, x0 = probs.max(-1)
        return x0, conf

    @staticmethod
    def probabilities(logits: torch.Tensor, knobs: Knobs) -> torch.Tensor:
        """fp32 logits [n, V] -> the distributions tokens are drawn from: temperature, top-k, top-p, softmax."""
        if knobs.temperature > 0:
            logits = logits / knobs.temperature
        if knobs.top_k and knobs.top_k < logits.shape[-1]:
            kth = torch.topk(logits, knobs.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if knobs.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # Drop a token once the mass before it already reaches top_p; the best token always stays.
            drop_sorted = (cum - sorted_logits.softmax(-1)) >= knobs.top_p
            drop_sorted[:, 0] = False  # explicit: a top_p below fp32's smallest number would drop everything
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits.softmax(-1)

    def commit(self, seq: Sequence, positions: list[int], x0: torch.Tensor, conf: torch.Tensor) -> int:
        """Decode step for every active block from one forward's predictions; returns tokens committed."""
        ids, confs = x0.tolist(), conf.tolist()
        by_pos = {p: i for i, p in enumerate(positions)}
        committed = 0
        for blk in seq.blocks[seq.first_active():]:
            if not blk.masked:
                continue
            rows = [by_pos[p] for p in range(blk.start, blk.end) if seq.is_masked[p]]
            chosen = self.select(blk, rows, confs, seq.knobs.tau_conf)
            for r in chosen:
                pos, tok = positions[r], ids[r]
                seq.tokens[pos] = tok
                seq.is_masked[pos] = False
                if tok in seq.knobs.stop_ids:
                    seq.eos_seen = True
            blk.masked -= len(chosen)
            committed += len(chosen)
        return committed

    def record_logprobs(self, seq: Sequence, positions: list[int], logits: torch.Tensor) -> None:
        """The one place a committed token's log-probability is recorded: an algorithm calls it when it
        commits tokens at positions, with the fp32 logits rows [len(positions), V] that committed them (a
        verifying algorithm passes its verifier's rows). Recorded only if the request asked for logprobs."""
        k = seq.knobs.logprobs
        if k is None or not positions:
            return
        tokens = [seq.tokens[p] for p in positions]
        for pos, lp in zip(positions, token_logprobs(logits, tokens, seq.knobs.temperature, k)):
            seq.logprobs[pos] = lp

    def select(self, blk: Block, rows: list[int], confs: list[float], tau_conf: float) -> list[int]:
        """The rows (indices into this forward's predictions, in position order) of one block's masks
        to commit; rows[0] == 0 means the block holds the sequence's leftmost mask."""
        raise NotImplementedError

    @staticmethod
    def confident(rows: list[int], confs: list[float], tau_conf: float) -> list[int]:
        return [r for r in rows if confs[r] > tau_conf]  # strictly greater, in fp32

    def finish_blocks(self, seq: Sequence) -> None:
        """Blocks with no masks become done (to_cache) in order; a later one waits for an active predecessor."""
        for blk in seq.blocks[seq.num_done:]:
            if blk.masked:
                break
            seq.num_done += 1

    # ---- attention (the runner asks) ----------------------------------------------------------
    def attention_windows(self, seq: Sequence, start: int, end: int,
                          ends: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """The window's rows cut into attention calls, in order: (rows, keys [0, k_len) they attend over,
        [rows, k_len] bool mask). Instead of k_len, a call may name its keys' sequence positions [Lk] (mask
        [rows, Lk] or None). A call of one row runs as a decode call (calls.py), which an algorithm may
        also return itself to put several single-query rows in one. Generic: the whole window in one call."""
        return [(end - start, end, self.attention_rows(seq, start, end, end, ends))]

    def positions(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """RoPE positions of the window's rows: the sequence's own indices (exact mode's extra rows reuse
        them)."""
        return torch.arange(start, end)

    def attention_rows(self, seq: Sequence, start: int, end: int, k_len: int, ends: torch.Tensor) -> torch.Tensor:
        """[end - start, k_len] bool, True = may attend, for one window whose block-causal visible ends
        are `ends`. The generic rule: a token sees every position before the end of its own block."""
        return torch.arange(k_len)[None, :] < ends[:, None]

    def adapter_rows(self, seq: Sequence, start: int, end: int) -> list[int]:
        """Window rows (from 0) where the model's mask adapter acts; none for plain D2F and AR models."""
        return []

    # ---- outputs ------------------------------------------------------------------------------
    def check_finished(self, seq: Sequence) -> tuple[list[int], str | None]:
        """(final answer tokens known so far, finish reason or None), cut at the first stop token or max_tokens."""
        knobs = seq.knobs
        ready = min(seq.finished_prefix(), knobs.max_tokens)
        answer = seq.tokens[seq.prompt_len:seq.prompt_len + ready]
        for i in range(seq.scanned, ready):  # final tokens never change: each is checked once
            if answer[i] in knobs.stop_ids:
                return answer[:i], "stop"
        seq.scanned = ready
        # max_tokens 0 (scoring the prompt alone) is done once the whole prompt went through the model.
        if ready == knobs.max_tokens and (ready or seq.cached_len >= seq.prompt_len):
            return answer, "length"
        return answer, None

    def emit_boundary(self, seq: Sequence) -> int:
        """Answer tokens in whole done blocks: what may be streamed (one chunk per committed block)."""
        if seq.num_done == 0:
            return 0
        return seq.blocks[seq.num_done - 1].end - seq.prompt_len
