"""The training loop both refurbish modes run: a step or time budget, the status line, periodic saves,
and Ctrl-C that saves what was trained."""
from __future__ import annotations

import signal
import sys
import threading
import time

from .progress import Progress

DEFAULT_STEPS = 100  # neither --steps nor --minutes: a short run, never an endless one


def run_training(train_step, save, global_step, steps: int | None, minutes: float | None, save_every: int,
                 stream=None) -> int:
    """train_step() -> (loss, tokens) until the budget is spent; save() every save_every steps counted by
    global_step() (resumed runs keep counting), at the end, and after Ctrl-C. A Ctrl-C lets the step in
    hand finish first, so the saved state is a whole step. Returns 0, or 130 after Ctrl-C."""
    steps = steps if steps or minutes else DEFAULT_STEPS
    seconds = minutes * 60 if minutes else None
    progress = Progress(steps, seconds, stream or sys.stderr)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()  # only there can a signal handler be set
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main else None
    start, done = time.monotonic(), 0
    try:
        while not stop.is_set() and (steps is None or done < steps) \
                and (seconds is None or time.monotonic() - start < seconds):
            loss, tokens = train_step()
            done += 1
            progress.update(done, loss, tokens)
            if save_every and global_step() % save_every == 0:
                save()
    except KeyboardInterrupt:
        stop.set()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        progress.close()
    save()
    return 130 if stop.is_set() else 0
