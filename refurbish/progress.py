"""One status line: step, loss, tokens/s and ETA (steps- or time-bounded runs)."""
from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(self, total_steps: int | None, total_seconds: float | None, stream=sys.stderr):
        self.total_steps, self.total_seconds, self.stream = total_steps, total_seconds, stream
        self.start = time.monotonic()
        self.tokens = 0
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def update(self, done: int, loss: float, tokens: int) -> str:
        self.tokens += tokens
        elapsed = time.monotonic() - self.start
        left = []
        if self.total_steps:
            left.append(elapsed / done * (self.total_steps - done))
        if self.total_seconds:
            left.append(self.total_seconds - elapsed)
        bar = ""
        if self.total_steps:
            filled = int(20 * done / self.total_steps)
            bar = "[" + "#" * filled + "." * (20 - filled) + f"] {done}/{self.total_steps} "
        else:
            bar = f"step {done} "
        line = (f"{bar}loss {loss:.4f}  {self.tokens / max(elapsed, 1e-9):.0f} tok/s  "
                f"eta {_clock(min(left)) if left else '?'}")
        # A terminal gets one rewritten line; a log file gets a line every so often.
        if self.tty:
            print("\r" + line, end="", file=self.stream, flush=True)
        elif done == 1 or done % 10 == 0 or done == self.total_steps:
            print(line, file=self.stream, flush=True)
        return line

    def close(self) -> None:
        if self.tty:
            print(file=self.stream)
