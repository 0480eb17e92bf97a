"""Exact mode on an AR-preserving model: mask rows draft, the next forward's clean rows verify.

A clean row of an AR-preserving model sees only clean tokens, so it is the AR model itself. Each forward
feeds the committed tokens not yet cached, the pending drafts as clean tokens, then a block of masks:

    [ ... committed | d_1 .. d_k | mask x m ]      (m = block_size - 1: as many masks as drafts to come)
      row c-1 and the draft rows predict positions c .. c+k: the AR model's tokens there;
      the mask rows predict positions c+k+1 .. c+k+m: the next drafts. A mask sees the committed tokens,
      the drafts and the other masks; no mask sits at the last draft's own position (measured: such a
      trailing mask, which predicts nothing, costs a row and leaves the acceptance where it is).

The longest prefix of drafts the AR tokens agree with is committed, then the AR token after it; so every
forward commits 1 to k+1 tokens, all the AR model's. Only when every draft was accepted do the mask rows'
proposals (conditioned on those drafts) become the next drafts; otherwise they are dropped, and so is the
KV of every rejected position (the cache ends at the last accepted draft). With sampling, a draft x
proposed with probability q(x) is accepted with probability min(1, p(x)/q(x)), p being the AR model's, and
a rejection draws from normalize(max(0, p - q)): the standard speculative-sampling rule, whose output
follows p exactly. The drafts of one round are drawn independently (each mask row sees masks, not the
other drafts), so q of each is its own row's distribution.

After a rejection the next forward still needs drafts, made without the AR token that replaced the first
draft. Two groups of extra rows provide them:
  - the fallback group: m masks at positions c, c+1, ... that see only the committed prefix;
  - runner-up candidates (greedy, knobs.draft_width w > 1): the drafter's next w - 1 tokens for d_1, each
    a clean row at d_1's position that sees the prefix and itself. When the AR token at c is one of them,
    that row has already run the AR model on it, so its prediction for c+1 is a draft that is nearly
    always right (it only misses where another GEMM row rounds differently).

    [ ... committed | d_1 .. d_k | masks | fallback masks | c_2 .. c_w ]

Neither group ever commits anything: commits come only from the AR rows of the committed tokens and the
verified drafts, so the output is the AR model's greedy output whatever the width, and the extra rows'
K/V (slots past the window's drafts) is never kept.

Attention: every answer row is a single-query row of one decode call (calls.py) over the sequence's keys
in order; the clean rows see exactly AR's key prefix, in the GEMM row AR gives their position, so they
get AR's bits, and the drafting rows ride in the same call. At block 2 and width 1 that is one
call a layer, as AR decoding has.

Between forwards the sequence's tokens are the committed ones only; `begin` appends the drafts and masks
and `step` cuts them off again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..sequence import Knobs, Sequence
from .ar_preserving import ARPreserving
from .calls import decode_calls

if TYPE_CHECKING:
    from ..runner import Work


class Verified(ARPreserving):
    # ---- planning -----------------------------------------------------------------------------
    fallback = True  # a forward with drafts also drafts for the case that it rejects them all

    def shape(self, seq: Sequence) -> tuple[int, int, int, int]:
        """(drafts k, candidates for d_1, masks, fallback masks) of the next forward.

        block_size - 1 masks, fewer when max_tokens is near (a forward commits at most k + 1 tokens; drafts
        past the end are useless). The fallback group and the runner-up candidates are only for a forward
        with drafts (a forward without any needs none: its masks are that), and take at most `overhang`
        sequence indices (KV slots) past prompt + max_tokens."""
        k = len(seq.drafts)
        room = seq.prompt_len + seq.knobs.max_tokens - seq.end  # answer tokens still allowed
        masks = min(seq.knobs.block_size - 1, max(0, room - k - 1))
        fallback = min(seq.knobs.block_size - 1, max(0, room - 1)) if self.fallback and k else 0
        candidates = 1 + len(seq.draft_alts) if k and room > 1 else 1
        return k, candidates, masks, fallback

    def overhang(self, knobs: Knobs) -> int:
        """KV slots a window may take past prompt + max_tokens: the fallback group and the candidates."""
        return (knobs.block_size - 1) * int(self.fallback) + knobs.draft_width - 1

    def growth(self, seq: Sequence) -> int:
        """Positions appended before the forward; at least one, so a forward is always planned as one that
        appends (a lone placeholder is left out of the window: the AR token is read from the row before)."""
        k, candidates, masks, fallback = self.shape(seq)
        return max(1, k + masks + fallback + candidates - 1)

    def window(self, seq: Sequence, end: int, add: bool, shift_logits: bool) -> tuple[int, int, list[int]]:
        # Rows read (each predicts index + 1): the last committed token's (the AR token at c), the draft
        # rows (AR tokens), the masks, the fallback masks and the candidates (the next drafts).
        c = seq.end
        k, candidates, masks, fallback = self.shape(seq)
        predict = [c] + [c + j + 1 for j in range(k + masks + fallback + candidates - 1)]
        if not k + masks:
            end -= 1  # the placeholder
        return end, c, predict

    # ---- executing a Work ---------------------------------------------------------------------
    def begin(self, work: Work) -> None:
        if not work.add_block:  # a prompt chunk
            return
        seq = work.seq
        k, candidates, masks, fallback = self.shape(seq)  # before the sequence grows: it reads its end
        alts = seq.draft_alts[:candidates - 1]
        placeholder = 0 if k + masks else 1
        tail = masks + fallback + placeholder
        seq.layout = (seq.end, k, candidates, masks, fallback)
        seq.tokens.extend(seq.drafts + [seq.mask_id] * tail + alts)
        seq.is_masked.extend([False] * k + [True] * tail + [False] * len(alts))

    def step(self, work: Work, logits: torch.Tensor) -> int:
        seq = work.seq
        c = work.commit_upto
        layout, seq.layout = seq.layout, None
        if not work.predict:
            seq.cached_len = c
            return 0
        if not bool(torch.isfinite(logits.sum())):  # one sum: see Algorithm.step
            raise FloatingPointError("non-finite logits")
        _, k, candidates, masks, fallback = layout
        drafts = seq.drafts
        ar_rows = logits[:1 + k]
        mask_rows = logits[1 + k:1 + k + masks]
        fallback_rows = logits[1 + k + masks:1 + k + masks + fallback]
        candidate_rows = logits[1 + k + masks + fallback:]
        accepted, token = self.verify(seq, ar_rows)
        self.count(seq, k, accepted)
        new = drafts[:accepted] + [token]
        alts = seq.draft_alts[:candidates - 1]
        del seq.tokens[c:], seq.is_masked[c:]
        seq.tokens.extend(new)
        seq.is_masked.extend([False] * len(new))
        # Rows up to the last accepted draft saw only final tokens: their K/V written by this forward are
        # the AR model's. The token after them has not been fed yet; rejected positions are never cached.
        seq.cached_len = c + accepted
        seq.eos_seen = any(t in seq.knobs.stop_ids for t in new)
        # Row j is the AR model's distribution at c + j: the committed tokens' logprobs are exact AR ones.
        self.record_logprobs(seq, list(range(c, c + len(new))), ar_rows[:len(new)])
        if seq.eos_seen:
            seq.drafts, seq.draft_probs, seq.draft_alts = [], None, []
        elif accepted == k:
            seq.drafts, seq.draft_probs, seq.draft_alts = self.propose(seq, mask_rows)
        elif accepted == 0 and token in alts:  # a runner-up was the AR token: its row drafts what follows
            seq.drafts, seq.draft_probs, seq.draft_alts = self.follow(seq, candidate_rows[alts.index(token)],
                                                                      fallback_rows[1:])
        elif accepted == 0 and fallback_rows.shape[0]:  # drafted without the token at c
            seq.drafts, seq.draft_probs, seq.draft_alts = self.propose(seq, fallback_rows)
        else:  # the mask rows drafted after a rejected token (or past the end): useless
            seq.drafts, seq.draft_probs, seq.draft_alts = [], None, []
        if seq.record is not None:
            self.note_drafts(seq, c, drafts, accepted, new)
        return len(new)

    @staticmethod
    def note_drafts(seq: Sequence, c: int, drafts: list[int], accepted: int, new: list[int]) -> None:
        """The step stream's view of this forward (answer positions): what it made final, which earlier
        drafts it accepted or rejected, and the drafts it proposed for the next forward."""
        p, rec = seq.prompt_len, seq.record
        rec.committed = [(c + j - p, t) for j, t in enumerate(new)]
        rec.accepted = [(c + j - p, t) for j, t in enumerate(drafts[:accepted])]
        rec.rejected = [(c + j - p, t) for j, t in enumerate(drafts) if j >= accepted]
        rec.proposed = [(seq.end + j - p, t) for j, t in enumerate(seq.drafts)]

    def verify(self, seq: Sequence, rows: torch.Tensor) -> tuple[int, int]:
        """AR rows [k+1, V] for the k drafts and the position after them -> (drafts accepted, the token
        committed after them)."""
        knobs, drafts = seq.knobs, seq.drafts
        if knobs.temperature == 0:
            ar, _ = self.choose(rows, knobs, None)  # exactly what AR decoding computes per row
            ar = ar.tolist()
            n = 0
            while n < len(drafts) and drafts[n] == ar[n]:
                n += 1
            return n, ar[n]
        p, q, gen = self.probabilities(rows, knobs), seq.draft_probs, seq.generator
        for j, x in enumerate(drafts):
            u = float(torch.rand((), generator=gen, device=p.device))
            if u * float(q[j, x]) < float(p[j, x]):  # accepted with probability min(1, p(x) / q(x))
                continue
            residual = (p[j] - q[j]).clamp(min=0)
            if not float(residual.sum()) > 0:  # p <= q everywhere only by rounding: p itself is the residual
                residual = p[j]
            return j, int(torch.multinomial(residual, 1, generator=gen))
        return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=gen))

    def propose(self, seq: Sequence, rows: torch.Tensor) -> tuple[list[int], torch.Tensor | None, list[int]]:
        """Mask rows [n, V] -> the next drafts, (sampling) the distributions they were drawn from, and
        (greedy, draft_width > 1) the runner-up tokens for the first draft."""
        if not rows.shape[0]:
            return [], None, []
        if seq.knobs.temperature == 0:
            ids, _ = self.choose(rows, seq.knobs, None)
            drafts, width = ids.tolist(), seq.knobs.draft_width
            alts = []
            if width > 1:
                top = torch.topk(rows[0], min(width, rows.shape[1])).indices.tolist()
                alts = [t for t in top if t != drafts[0]][:width - 1]
            return drafts, None, alts
        q = self.probabilities(rows, seq.knobs)
        return torch.multinomial(q, 1, generator=seq.generator).squeeze(-1).tolist(), q, []

    def follow(self, seq: Sequence, row: torch.Tensor, later: torch.Tensor):
        """Drafts after an accepted runner-up candidate: its own row's prediction for the next position,
        then the fallback masks' for the ones after (propose's return)."""
        return self.propose(seq, torch.cat([row[None], later]))

    @staticmethod
    def count(seq: Sequence, k: int, accepted: int) -> None:
        stats = seq.draft_stats
        grow = k - len(stats.proposed)
        if grow > 0:
            stats.proposed.extend([0] * grow)
            stats.accepted.extend([0] * grow)
        for j in range(k):
            stats.proposed[j] += 1
            stats.accepted[j] += j < accepted

    # ---- attention (the runner asks) ----------------------------------------------------------
    def attention_windows(self, seq: Sequence, start: int, end: int, ends: torch.Tensor) -> list:
        """Clean rows attend exactly as AR decoding's rows do, so their bits are AR's in any dtype, not
        merely close: prompt rows in one call over the prompt, as AR's prefill; each answer row as a
        single-query row over the keys up to itself, in the GEMM row AR gives its position (calls.py).
        A mask sees the committed tokens and its own group; a candidate, the committed tokens and itself."""
        c, k = (seq.layout[0], seq.layout[1]) if seq.layout is not None else (end, 0)
        out, i = [], start
        prompt_end = min(seq.prompt_len, c)
        if i < prompt_end:
            causal = torch.arange(prompt_end)[None, :] <= torch.arange(i, prompt_end)[:, None]
            out.append((prompt_end - i, prompt_end, causal))
            i = prompt_end
        if i < end:
            keys = torch.arange(end)
            rows = torch.arange(i, end)
            group = torch.cat([torch.full((c,), -1), self._groups(seq.layout, end)])  # -1: committed
            own = (group[None, :] < 0) | (group[None, :] == group[i:, None])
            clean = rows < c + k  # the committed tokens not yet cached and the drafts: AR's rows
            visible = torch.where(clean[:, None], keys[None, :] <= rows[:, None], own)
            out += decode_calls(end, visible, [p if p < c + k else None for p in range(i, end)])
        return out

    def positions(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """The fallback group sits at the drafts' positions, and every candidate at d_1's."""
        if seq.layout is None:
            return torch.arange(start, end)
        c, k, _, masks, _ = seq.layout
        rel = torch.arange(end - c)
        group = self._groups(seq.layout, end)
        pos = torch.where(group == 0, c + rel, torch.where(group == 1, c + rel - k - masks, c))
        return torch.cat([torch.arange(start, c), pos[max(start - c, 0):]])

    @staticmethod
    def _groups(layout: tuple[int, int, int, int, int] | None, end: int) -> torch.Tensor:
        """Group of each sequence index in [c, end): 0 the drafts and masks, 1 the fallback group, 2 + i
        candidate i (each alone)."""
        if layout is None:
            return torch.zeros(0, dtype=torch.long)
        c, k, _, masks, fallback = layout
        rel = torch.arange(end - c)
        per = k + masks
        return torch.where(rel < per, 0, torch.where(rel < per + fallback, 1, 2 + rel - per - fallback))

    # ---- outputs ------------------------------------------------------------------------------
    def emit_boundary(self, seq: Sequence) -> int:
        """Every committed token is final: each forward's tokens are streamed at once."""
        return seq.end - seq.prompt_len
