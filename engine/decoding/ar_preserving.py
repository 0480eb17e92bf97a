"""AR-preserving D2F (a refurbished AR model): the clean prefix is exactly the AR model's, so the
leftmost mask's prediction is the AR model's own token and is committed every forward; elsewhere only
confident tokens, with no most-confident fallback."""
from __future__ import annotations

import torch

from ..sequence import Block, Sequence
from .base import Algorithm


class ARPreserving(Algorithm):
    def select(self, blk: Block, rows: list[int], confs: list[float], tau_conf: float) -> list[int]:
        chosen = self.confident(rows, confs, tau_conf)
        if rows[0] == 0 and chosen[:1] != [0]:  # row 0 is the sequence's leftmost mask
            chosen.insert(0, 0)
        return chosen

    def attention_rows(self, seq: Sequence, start: int, end: int, k_len: int, ends: torch.Tensor) -> torch.Tensor:
        """A mask sees what block-causal attention gives it; a clean token sees only clean tokens at or
        before itself, never a mask, so its state is exactly the AR model's."""
        keys = torch.arange(k_len)
        masked = torch.tensor(seq.is_masked[start:end], dtype=torch.bool)
        clean_key = torch.zeros(k_len, dtype=torch.bool)
        clean_key[:start] = True  # the cache holds committed tokens only
        clean_key[start:end] = ~masked
        causal = keys[None, :] <= torch.arange(start, end)[:, None]
        return torch.where(masked[:, None], keys[None, :] < ends[:, None], causal & clean_key[None, :])

    def adapter_rows(self, seq: Sequence, start: int, end: int) -> list[int]:
        """The mask adapter acts at mask positions only."""
        return [j for j, x in enumerate(seq.is_masked[start:end]) if x]
