"""Exact mode on an AR-preserving model: mask rows draft, the next forward's clean rows verify.

A clean row of an AR-preserving model sees only clean tokens, so it is the AR model itself. Each forward
feeds the committed tokens not yet cached, the pending drafts as clean tokens, then a block of masks:

    [ ... committed | d_1 .. d_k | mask x m ]
      row c-1 and the draft rows predict positions c .. c+k: the AR model's tokens there;
      the mask rows (but the last) predict positions c+k+1 .. c+k+m-1: the next drafts.

The longest prefix of drafts the AR tokens agree with is committed, then the AR token after it; so every
forward commits 1 to k+1 tokens, all the AR model's. Only when every draft was accepted do the mask rows'
proposals (conditioned on those drafts) become the next drafts; otherwise they are dropped, and so is the
KV of every rejected position (the cache ends at the last accepted draft). With sampling, a draft x
proposed with probability q(x) is accepted with probability min(1, p(x)/q(x)), p being the AR model's, and
a rejection draws from normalize(max(0, p - q)): the standard speculative-sampling rule, whose output
follows p exactly. The drafts of one round are drawn independently (each mask row sees masks, not the
other drafts), so q of each is its own row's distribution.

Between forwards the sequence's tokens are the committed ones only; `begin` appends the drafts and masks
and `step` cuts them off again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..sequence import Sequence
from .ar_preserving import ARPreserving

if TYPE_CHECKING:
    from ..runner import Work


class Verified(ARPreserving):
    # ---- planning -----------------------------------------------------------------------------
    def growth(self, seq: Sequence) -> int:
        """The drafts, then the mask rows: B of them (B-1 drafts), fewer when max_tokens is near, since a
        forward commits at most its drafts + 1; at least one (the position the AR token goes to)."""
        k = len(seq.drafts)
        room = seq.prompt_len + seq.knobs.max_tokens - seq.end  # answer tokens still allowed
        return k + min(seq.knobs.block_size, max(1, room - k - 1))

    def window(self, seq: Sequence, end: int, add: bool, shift_logits: bool) -> tuple[int, int, list[int]]:
        c = seq.end
        predict = list(range(c, end))  # AR tokens at c .. c+k, then the next drafts
        if end - c - len(seq.drafts) == 1:
            end -= 1  # a lone mask proposes nothing: its token is read from the row before it, not fed
        return end, c, predict

    # ---- executing a Work ---------------------------------------------------------------------
    def begin(self, work: Work) -> None:
        if not work.add_block:  # a prompt chunk
            return
        seq = work.seq
        k = len(seq.drafts)
        masks = self.growth(seq) - k
        seq.tokens.extend(seq.drafts + [seq.mask_id] * masks)
        seq.is_masked.extend([False] * k + [True] * masks)

    def step(self, work: Work, logits: torch.Tensor) -> int:
        seq = work.seq
        c = work.commit_upto
        if not work.predict:
            seq.cached_len = c
            return 0
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("non-finite logits")
        drafts, k = seq.drafts, len(seq.drafts)
        accepted, token = self.verify(seq, logits[:k + 1])
        self.count(seq, k, accepted)
        new = drafts[:accepted] + [token]
        del seq.tokens[c:], seq.is_masked[c:]
        seq.tokens.extend(new)
        seq.is_masked.extend([False] * len(new))
        # Rows up to the last accepted draft saw only final tokens: their K/V written by this forward are
        # the AR model's. The token after them has not been fed yet; rejected positions are never cached.
        seq.cached_len = c + accepted
        seq.eos_seen = any(t in seq.knobs.stop_ids for t in new)
        # Row j is the AR model's distribution at c + j: the committed tokens' logprobs are exact AR ones.
        self.record_logprobs(seq, list(range(c, c + len(new))), logits[:len(new)])
        if accepted == k and not seq.eos_seen:
            seq.drafts, seq.draft_probs = self.propose(seq, logits[k + 1:])
        else:  # the mask rows drafted after a rejected token (or past the end): useless
            seq.drafts, seq.draft_probs = [], None
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

    def propose(self, seq: Sequence, rows: torch.Tensor) -> tuple[list[int], torch.Tensor | None]:
        """Mask rows [n, V] -> the next drafts, and (sampling) the distributions they were drawn from."""
        if not rows.shape[0]:
            return [], None
        if seq.knobs.temperature == 0:
            ids, _ = self.choose(rows, seq.knobs, None)
            return ids.tolist(), None
        q = self.probabilities(rows, seq.knobs)
        return torch.multinomial(q, 1, generator=seq.generator).squeeze(-1).tolist(), q

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
    def attention_windows(self, seq: Sequence, start: int, end: int,
                          ends: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
        """Clean rows attend in exactly the calls AR decoding makes for them, so their bits are AR's in any
        dtype, not merely close (attention kernels round differently by query and key count): prompt rows
        in one call over the prompt, as AR's prefill; each answer row alone over the keys up to itself, as
        an AR step. The mask rows then attend in one call of their own."""
        full = self.attention_rows(seq, start, end, end, ends)
        out, i = [], start
        prompt_end = min(seq.prompt_len, end)
        if i < prompt_end:
            out.append((prompt_end - i, prompt_end, full[:prompt_end - i, :prompt_end]))
            i = prompt_end
        while i < end and not seq.is_masked[i]:
            out.append((1, i + 1, full[i - start:i - start + 1, :i + 1]))
            i += 1
        if i < end:
            out.append((end - i, end, full[i - start:]))
        return out

    # ---- outputs ------------------------------------------------------------------------------
    def emit_boundary(self, seq: Sequence) -> int:
        """Every committed token is final: each forward's tokens are streamed at once."""
        return seq.end - seq.prompt_len
