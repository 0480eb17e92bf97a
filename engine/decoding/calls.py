"""Decode calls: how an algorithm asks for single-query rows to attend together (attention.decode_attention).

A row of a decode call is either exact (it must get the bits AR decoding's own call for its position
gives it: GEMM row position % ROWS, over as many keys, rounded up to BUCKET, as it sees) or free (a draft:
any GEMM row, any key count; it only has to be the same whatever else is in the batch, which holds because
every call is built from its sequence's own state).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.attention import ROWS, bucket


@dataclass(slots=True)
class DecodeCall:
    """`rows` consecutive window rows, one query each, over keys [0, keys) of the sequence (an int) or
    over the sequence indices `keys` [Lk]; row i sees the keys where visible[i] is True and sits in
    GEMM row place[i]."""
    rows: int
    keys: int | torch.Tensor
    visible: torch.Tensor  # [rows, Lk] bool
    place: list[int]


def decode_calls(keys: int | torch.Tensor, visible: torch.Tensor, exact: list[int | None]) -> list[DecodeCall]:
    """Cut consecutive rows into as few decode calls as the exact ones allow.

    visible [rows, Lk] over `keys` (as DecodeCall); exact[i] is row i's position when it must get AR's
    bits, else None. An exact row sees a prefix of the keys (what AR's row sees, in AR's order) and
    needs a call over that prefix's bucket with its GEMM row free; a free row needs all the keys."""
    lk = keys if isinstance(keys, int) else keys.shape[0]
    seen = visible.sum(-1).tolist()
    calls: list[DecodeCall] = []
    first, m, taken = 0, None, []

    def close(upto: int) -> None:
        n = min(lk, m)
        place, free = [], [s for s in range(ROWS) if s not in taken]
        for i in range(first, upto):
            place.append(exact[i] % ROWS if exact[i] is not None else free.pop(0))
        calls.append(DecodeCall(upto - first, n if isinstance(keys, int) else keys[:n],
                                visible[first:upto, :n], place))

    for i, pos in enumerate(exact):
        need = bucket(seen[i]) if pos is not None else bucket(lk)
        slot = pos % ROWS if pos is not None else None
        fits = m == need and i - first < ROWS and slot not in taken  # ROWS rows: enough free GEMM rows
        if m is not None and not fits:
            close(i)
            first, taken = i, []
        m = need
        if slot is not None:
            taken.append(slot)
    if exact:
        close(len(exact))
    return calls
