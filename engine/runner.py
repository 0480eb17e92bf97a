"""Builds one packed forward from the scheduled windows, runs the model, hands back logits per sequence."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .decoding.calls import DecodeCall
from .kv_cache import PagePool
from .models.attention import ROWS, bucket
from .models.decoder import AttnBatch, Decoder, KVCache, SeqWindow
from .sequence import Sequence

# Without row-invariant kernels (F.linear), row counts are padded to a multiple of this: CPU GEMM
# gives a row the same bits for any multiple of 8 rows but not for 1-7 rows, so padding keeps a
# request's answer independent of what else is in the batch.
ROW_ALIGN = 8


@dataclass(slots=True)
class Work:
    """One sequence's part of a step: feed tokens [start, end); [start, commit_upto) are final."""
    seq: Sequence
    start: int
    end: int
    commit_upto: int
    predict: list[int]  # positions whose tokens this forward predicts
    add_block: bool = False  # the algorithm appends positions before the forward (predict includes them)
    score: list[int] = field(default_factory=list)  # prompt positions p whose row scores prompt token p + 1


def visible_end(seq: Sequence, start: int, end: int, prompt_causal: bool) -> torch.Tensor:
    """Block-causal attention: a token sees every position before the end of its own block."""
    pos = torch.arange(start, end)
    p, b = seq.prompt_len, seq.knobs.block_size
    answer_end = p + ((pos - p).clamp(min=0) // b + 1) * b
    prompt_end = pos + 1 if prompt_causal else torch.full_like(pos, p)
    return torch.where(pos < p, prompt_end, answer_end)


class Runner:
    def __init__(self, model: Decoder, kv: KVCache, pool: PagePool):
        self.model = model
        self.kv = kv
        self.pool = pool
        self.device = model.device
        self.shift = model.spec.shift_logits
        self.prompt_causal = model.spec.prompt_causal
        self.align = 1 if model.row_invariant else ROW_ALIGN

    def _align(self, n: int) -> int:
        return -(-n // self.align) * self.align

    def _slot_tensor(self, seq: Sequence, n: int) -> torch.Tensor:
        ps = self.pool.page_size
        pages = torch.tensor(seq.pages, dtype=torch.long)
        return (pages[:, None] * ps + torch.arange(ps)).flatten()[:n]

    def run(self, works: list[Work]) -> list[torch.Tensor]:
        """One forward over every window; returns fp32 logits [len(w.predict) + len(w.score), V] per work
        item: the predicted positions' rows, then the scored prompt rows."""
        ids, pos, write, windows, adapter_rows = [], [], [], [], []
        offset = 0
        dev = self.device
        for w in works:
            n = w.end - w.start
            slots = self._slot_tensor(w.seq, w.end)
            ids.append(torch.tensor(w.seq.tokens[w.start:w.end], dtype=torch.long))
            positions = w.seq.algorithm.positions(w.seq, w.start, w.end)
            pos.append(positions)
            write.append(slots[w.start:])
            ends = visible_end(w.seq, w.start, w.end, self.prompt_causal)
            pages = w.seq.pages
            first = pages[0] * self.pool.page_size if pages == list(range(pages[0], pages[0] + len(pages))) else None
            gathered = slots.to(dev) if first is None else None
            # Each sequence's algorithm owns its attention rule (which rows attend in one call, over which keys)
            # and where the mask adapter acts.
            row = 0
            for call in w.seq.algorithm.attention_windows(w.seq, w.start, w.end, ends):
                if not isinstance(call, DecodeCall) and call[0] == 1:  # one query: a decode call, as AR's
                    _, key_set, m = call
                    lk = key_set if isinstance(key_set, int) else key_set.shape[0]
                    call = DecodeCall(1, key_set, torch.ones(1, lk, dtype=torch.bool) if m is None else m,
                                      [int(positions[row]) % ROWS])
                if isinstance(call, DecodeCall):
                    windows.append(self._decode_window(call, slots, first))
                    row += call.rows
                    continue
                rows, key_set, m = call
                if isinstance(key_set, int):  # keys [0, key_set)
                    keys = slice(first, first + key_set) if first is not None else gathered[:key_set]
                else:  # explicit key positions of the sequence: [Lk]
                    keys = slots[key_set].to(dev)
                windows.append(SeqWindow(rows, keys, None if m is None or bool(m.all()) else m[None, None].to(dev)))
                row += rows
            adapter_rows.extend(offset + j for j in w.seq.algorithm.adapter_rows(w.seq, w.start, w.end))
            offset += n
        pad = self._align(offset) - offset
        ids.append(torch.zeros(pad, dtype=torch.long))
        pos.append(torch.zeros(pad, dtype=torch.long))
        write.append(torch.full((pad,), self.kv.scratch_slot, dtype=torch.long))
        batch = AttnBatch(
            positions=torch.cat(pos).to(dev), write_slots=torch.cat(write).to(dev), windows=windows,
            adapter_rows=torch.tensor(adapter_rows, dtype=torch.long, device=dev) if adapter_rows else None)
        hidden = self.model(torch.cat(ids).to(dev), batch, self.kv)
        return self._logits(works, hidden)

    def _decode_window(self, call: DecodeCall, slots: torch.Tensor, first: int | None) -> SeqWindow:
        """A decode call's keys (a cache slice when the sequence's pages are consecutive and the bucket
        fits in the cache, else its slots padded with the scratch slot), GEMM rows and additive bias."""
        lk = call.keys if isinstance(call.keys, int) else call.keys.shape[0]
        m = bucket(lk)
        if isinstance(call.keys, int) and first is not None and first + m <= self.kv.kv.shape[1]:
            keys = slice(first, first + m)
        else:
            idx = slots[:lk] if isinstance(call.keys, int) else slots[call.keys]
            keys = torch.cat([idx, idx.new_full((m - lk,), self.kv.scratch_slot)]).to(self.device)
        rows = torch.full((call.rows, m), float("-inf"))
        rows[:, :lk].masked_fill_(call.visible, 0.0)
        bias = torch.zeros(ROWS, m)
        bias[call.place] = rows
        first_row = call.place[0]
        if call.place == list(range(first_row, first_row + call.rows)):  # AR's lone row, most calls
            place = slice(first_row, first_row + call.rows)
        else:
            place = torch.tensor(call.place, dtype=torch.long, device=self.device)
        return SeqWindow(call.rows, keys, bias.to(self.device), place, lk)

    def _logits(self, works: list[Work], hidden: torch.Tensor) -> list[torch.Tensor]:
        """Logits only for predicted positions (shifted models read the row before each position) and
        scored prompt rows."""
        rows, saved, offset = [], [], 0
        extra = hidden.shape[0]  # saved rows (from earlier forwards) are appended after the packed ones
        for w in works:
            for p in w.predict:
                src = p - 1 if self.shift else p
                if src >= w.start:
                    rows.append(offset + src - w.start)
                else:  # the last committed position, computed when its block was committed
                    rows.append(extra + len(saved))
                    saved.append(w.seq.last_hidden)
            rows.extend(offset + p - w.start for p in w.score)  # inside the window: the scheduler planned so
            if self.shift and w.commit_upto > w.start:
                w.seq.last_hidden = hidden[offset + w.commit_upto - 1 - w.start].clone()
            offset += w.end - w.start
        source = torch.cat([hidden] + [s[None] for s in saved]) if saved else hidden
        n = len(rows)
        idx = torch.tensor(rows + [0] * (self._align(n) - n), dtype=torch.long, device=self.device)
        logits = self.model.logits(source.index_select(0, idx))[:n]
        out, at = [], 0
        for w in works:
            count = len(w.predict) + len(w.score)
            out.append(logits[at:at + count])
            at += count
        return out
