"""The training status line (tqdm): step, loss, tokens/s and ETA of a steps- or time-bounded run."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total_steps: int | None, total_seconds: float | None, stream=sys.stderr):
        self.total_steps, self.total_seconds = total_steps, total_seconds
        self.start = time.monotonic()
        self.tokens = 0
        tty = hasattr(stream, "isatty") and stream.isatty()
        # The ETA is ours: tqdm's knows the step budget but not --minutes, and a run stops at whichever comes first.
        fmt = "{bar:20}| {n_fmt}/{total_fmt}{postfix}" if total_steps else "step {n_fmt}{postfix}"
        # A log file gets a status every 10 s rather than a rewrite per step.
        self.bar = tqdm(total=total_steps, file=stream, bar_format=fmt, mininterval=0.1 if tty else 10, ascii=not tty)

    def update(self, done: int, loss: float, tokens: int) -> str:
        self.tokens += tokens
        elapsed = time.monotonic() - self.start
        left = []
        if self.total_steps:
            left.append(elapsed / done * (self.total_steps - done))
        if self.total_seconds:
            left.append(self.total_seconds - elapsed)
        status = (f"loss {loss:.4f}  {self.tokens / max(elapsed, 1e-9):.0f} tok/s  "
                  f"eta {_clock(min(left)) if left else '?'}")
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(done - self.bar.n)
        return str(self.bar)

    def close(self) -> None:
        self.bar.close()
