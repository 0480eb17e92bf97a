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

Draft tree (greedy, knobs.draft_width w > 1): a rejected first draft leaves the next forward with no
draft at all, so the runner-up tokens for the first draft are verified too, each in a side branch that
repeats the drafts after it and has masks of its own:

    [ ... committed | c_1 .. c_w | d_2 x w | ... | masks of branch 1 | ... | masks of branch w ]

Clean rows are laid out by depth (the w rows of one depth have key sets of one length: the prefix and
their own branch, stacked into one attention call whose rows get their lone bits), masks by branch (one
call; a mask sees the prefix and its own branch). A branch's rows take the positions the main branch's
have. The AR row before c_1 picks the branch whose candidate it agrees with; that branch is verified as
above, and its K/V rows are copied to the canonical slots (Sequence.kv_moves). The output is the AR
model's greedy output whatever the width; width only raises how often a forward has a draft to check.

Between forwards the sequence's tokens are the committed ones only; `begin` appends the drafts and masks
and `step` cuts them off again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..sequence import Knobs, Sequence
from .ar_preserving import ARPreserving

if TYPE_CHECKING:
    from ..runner import Work


class Verified(ARPreserving):
    # ---- planning -----------------------------------------------------------------------------
    fallback = True  # a forward with drafts also drafts for the case that it rejects them all

    def shape(self, seq: Sequence) -> tuple[int, int, int, int]:
        """(drafts k, branches, masks per branch, fallback masks) of the next forward.

        block_size - 1 masks, fewer when max_tokens is near (a forward commits at most k + 1 tokens; drafts
        past the end are useless). The fallback group's masks sit at c, c+1, ...: drafts for the positions
        after the AR token at c, made without it, for when every candidate at c is rejected (the next
        forward then still has drafts to check; a forward without drafts needs none: its masks are that).
        The main branch ends by prompt + max_tokens; side branches and the fallback group take at most
        `overhang` sequence indices (KV slots) past it."""
        k = len(seq.drafts)
        room = seq.prompt_len + seq.knobs.max_tokens - seq.end  # answer tokens still allowed
        masks = min(seq.knobs.block_size - 1, max(0, room - k - 1))
        fallback = min(seq.knobs.block_size - 1, max(0, room - 1)) if self.fallback and k else 0
        return k, 1 + len(seq.draft_alts) if k else 1, masks, fallback

    def overhang(self, knobs: Knobs) -> int:
        """KV slots a window may take past prompt + max_tokens: the fallback group and the side branches,
        each at most a main branch (drafts + masks)."""
        return (knobs.block_size - 1) * (int(self.fallback) + 2 * (knobs.draft_width - 1))

    def growth(self, seq: Sequence) -> int:
        """Positions appended before the forward; at least one, so a forward is always planned as one that
        appends (a lone placeholder is left out of the window: the AR token is read from the row before)."""
        k, branches, masks, fallback = self.shape(seq)
        return max(1, branches * (k + masks) + fallback)

    def window(self, seq: Sequence, end: int, add: bool, shift_logits: bool) -> tuple[int, int, list[int]]:
        c = seq.end
        k, branches, masks, fallback = self.shape(seq)
        # Rows read (each predicts index + 1): the last committed token's (the AR token at c), then per
        # branch its clean rows (AR tokens) and its mask rows (the next drafts).
        predict = [c]
        for i in range(branches):
            predict += [self._clean(c, branches, i, j) + 1 for j in range(k)]
            predict += [self._mask(c, k, branches, masks, i, r) + 1 for r in range(masks)]
        first = c + branches * (k + masks)  # the fallback group comes last
        predict += [first + r + 1 for r in range(fallback)]
        if not k + masks:
            end -= 1  # the placeholder
        return end, c, predict

    @staticmethod
    def _clean(c: int, branches: int, i: int, j: int) -> int:
        """Sequence index of branch i's clean row at depth j (its candidate at j = 0)."""
        return c + j * branches + i

    @staticmethod
    def _mask(c: int, k: int, branches: int, masks: int, i: int, r: int) -> int:
        return c + k * branches + i * masks + r

    # ---- executing a Work ---------------------------------------------------------------------
    def begin(self, work: Work) -> None:
        if not work.add_block:  # a prompt chunk
            return
        seq = work.seq
        k, branches, masks, fallback = self.shape(seq)  # before the sequence grows: it reads its end
        firsts = (seq.drafts[:1] + seq.draft_alts)[:branches]
        for j in range(k):
            seq.tokens.extend(firsts if j == 0 else [seq.drafts[j]] * branches)
        placeholder = 0 if k + masks else 1
        tail = masks * branches + fallback + placeholder
        seq.tokens.extend([seq.mask_id] * tail)
        seq.is_masked.extend([False] * (k * branches) + [True] * tail)
        seq.tree = (seq.end - k * branches - tail, k, branches, masks, fallback)

    def step(self, work: Work, logits: torch.Tensor) -> int:
        seq = work.seq
        c = work.commit_upto
        tree, seq.tree = seq.tree, None
        if not work.predict:
            seq.cached_len = c
            return 0
        if not bool(torch.isfinite(logits.sum())):  # one sum: see Algorithm.step
            raise FloatingPointError("non-finite logits")
        _, k, branches, masks, _ = tree
        per = k + masks  # rows read per branch
        branch = 0
        if branches > 1:  # greedy: the branch whose candidate the AR token at c agrees with, if any
            first, _ = self.choose(logits[:1], seq.knobs, None)
            firsts = seq.drafts[:1] + seq.draft_alts
            branch = firsts.index(int(first)) if int(first) in firsts[:branches] else 0
        rows = logits[1 + branch * per:1 + (branch + 1) * per]
        fallback_rows = logits[1 + branches * per:]
        drafts = ([seq.drafts[0] if branch == 0 else seq.draft_alts[branch - 1]] + seq.drafts[1:]) if k else []
        seq.drafts = drafts
        ar_rows = torch.cat([logits[:1], rows[:k]])
        accepted, token = self.verify(seq, ar_rows)
        self.count(seq, k, accepted)
        new = drafts[:accepted] + [token]
        del seq.tokens[c:], seq.is_masked[c:]
        seq.tokens.extend(new)
        seq.is_masked.extend([False] * len(new))
        # Rows up to the last accepted draft saw only final tokens: their K/V written by this forward are
        # the AR model's. The token after them has not been fed yet; rejected positions are never cached.
        # A side branch's (or, in a tree, a deeper) accepted row sits elsewhere: the engine copies its K/V.
        moves = [(self._clean(c, branches, branch, j), c + j) for j in range(accepted)]
        seq.kv_moves = [(src, dst) for src, dst in moves if src != dst]
        seq.cached_len = c + accepted
        seq.eos_seen = any(t in seq.knobs.stop_ids for t in new)
        # Row j is the AR model's distribution at c + j: the committed tokens' logprobs are exact AR ones.
        self.record_logprobs(seq, list(range(c, c + len(new))), ar_rows[:len(new)])
        if accepted == k and not seq.eos_seen:
            seq.drafts, seq.draft_probs, seq.draft_alts = self.propose(seq, rows[k:])
        elif accepted == 0 and fallback_rows.shape[0] and not seq.eos_seen:  # drafted without the token at c
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
                          ends: torch.Tensor) -> list[tuple[int, object, torch.Tensor | None]]:
        """Clean rows attend in exactly the calls AR decoding makes for them, so their bits are AR's in any
        dtype, not merely close (attention kernels round differently by query and key count): prompt rows
        in one call over the prompt, as AR's prefill; each answer row alone over the keys up to itself, as
        an AR step (a draft tree's rows of one depth stacked, each over its own keys: the single-query
        kernel gives a stacked row its lone bits). The mask rows then attend in one call of their own:
        each sees the committed tokens and its own branch."""
        c, k, branches, masks, _ = seq.tree if seq.tree is not None else (end, 0, 1, 0, 0)
        out, i = [], start
        prompt_end = min(seq.prompt_len, c)
        if i < prompt_end:
            causal = torch.arange(prompt_end)[None, :] <= torch.arange(i, prompt_end)[:, None]
            out.append((prompt_end - i, prompt_end, causal))
            i = prompt_end
        out += [(1, p + 1, None) for p in range(i, c)]
        prefix = torch.arange(c)
        for j in range(k):
            if branches == 1:
                out.append((1, c + j + 1, None))
            else:
                own = torch.tensor([[self._clean(c, branches, b, d) for d in range(j + 1)] for b in range(branches)])
                out.append((branches, torch.cat([prefix.expand(branches, c), own], dim=1), None))
        first = self._mask(c, k, branches, masks, 0, 0)
        if first < end:
            _, branch = self._tree_rows(seq.tree, end)
            key_branch = torch.cat([torch.full((c,), -1), branch])  # -1: the committed prefix
            row_branch = key_branch[first:]
            mask = (key_branch[None, :] < 0) | (key_branch[None, :] == row_branch[:, None])
            out.append((end - first, end, mask))
        return out

    def positions(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """A side branch's rows, and the fallback group's, take the main branch's positions."""
        if seq.tree is None:
            return torch.arange(start, end)
        c = seq.tree[0]
        pos, _ = self._tree_rows(seq.tree, end)
        return torch.cat([torch.arange(start, c), pos[max(start - c, 0):]])

    @staticmethod
    def _tree_rows(tree: tuple[int, int, int, int, int], end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Position and branch of each sequence index in [c, end), the layout _clean and _mask name: clean
        rows by depth, then masks by branch, then the fallback group (branch number `branches`)."""
        c, k, branches, masks, _ = tree
        rel = torch.arange(end - c)
        clean_rows, branch_rows = k * branches, k * branches + masks * branches
        m = rel - clean_rows
        per = max(masks, 1)
        pos = torch.where(rel < clean_rows, c + torch.div(rel, branches, rounding_mode="floor"),
                          torch.where(rel < branch_rows, c + k + m % per, c + rel - branch_rows))
        branch = torch.where(rel < clean_rows, rel % branches,
                             torch.where(rel < branch_rows, torch.div(m, per, rounding_mode="floor"), branches))
        return pos, branch

    # ---- outputs ------------------------------------------------------------------------------
    def emit_boundary(self, seq: Sequence) -> int:
        """Every committed token is final: each forward's tokens are streamed at once."""
        return seq.end - seq.prompt_len
