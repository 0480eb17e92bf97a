"""D2F pipelined parallel decoding (Algorithm 2); pure AR models use it too, with every tau at 1.0."""
from __future__ import annotations

from ..sequence import Block
from .base import Algorithm


class D2F(Algorithm):
    def select(self, blk: Block, rows: list[int], confs: list[float], tau_conf: float) -> list[int]:
        """Confident masks; a fully activated block that has none commits its most confident one."""
        chosen = self.confident(rows, confs, tau_conf)
        if not chosen and blk.fully_activated:
            chosen = [max(rows, key=lambda r: confs[r])]  # first of equals, like argmax
        return chosen
