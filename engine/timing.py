"""Wall-clock timing of the engine, shared by `d2f generate`, the benchmarks and `d2f eval`: one place that
decides what "tokens per second" means (generated tokens over the wall time of the call)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from .outputs import RequestOutput


@dataclass(slots=True)
class Timed:
    outputs: list[RequestOutput]
    seconds: float

    @property
    def tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)

    @property
    def forwards(self) -> int:
        return sum(o.num_forwards for o in self.outputs)

    @property
    def tokens_per_second(self) -> float | None:
        return self.tokens / self.seconds if self.seconds else None


def timed_generate(engine, prompts: list[list[int]], params) -> Timed:
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    return Timed(outputs, time.perf_counter() - start)


def fastest_generate(engine, prompts: list[list[int]], params, runs: int) -> Timed:
    """The fastest of several identical runs: what the machine can do, less scheduling noise."""
    return max((timed_generate(engine, prompts, params) for _ in range(runs)), key=lambda t: t.tokens_per_second or 0)


def device_sync(device) -> Callable[[], None] | None:
    """What waits for a device's queued kernels: CUDA calls return before the work is done, so a timer
    that does not wait measures the launch, not the work. None on CPU, where calls return finished."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def median_ms(fn, repeat: int, sync: Callable[[], None] | None = None) -> float:
    """Median milliseconds of fn() over repeat calls, after one call that pays for warm-up; sync (see
    device_sync) is waited on before each timer starts and stops."""
    wait = sync or (lambda: None)
    fn()
    times = []
    for _ in range(repeat):
        wait()
        start = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def stepped(engine, prompts: list[list[int]], params) -> dict:
    """All prompts admitted at once and stepped to the end: throughput, per-request latency, and how much of
    each step the forward takes."""
    for i, prompt in enumerate(prompts):
        engine.add_request(f"b{i}", prompt, params)
    fwd = total = 0.0
    steps = 0
    latency, tokens, forwards = {}, 0, []
    t0 = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                latency[out.request_id] = time.perf_counter() - t0
                tokens += len(out.token_ids)
                forwards.append(out.num_forwards)
        fwd += engine.stats.forward_seconds
        total += engine.stats.step_seconds
        steps += 1
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "forwards_per_token": round(sum(forwards) / max(tokens, 1), 3), "steps": steps,
            "forward_share": round(fwd / total, 3), "non_forward_share": round(1 - fwd / total, 3),
            "ms_per_step": round(1000 * total / steps, 2),
            "latency_p50_s": round(statistics.median(latency.values()), 3),
            "latency_max_s": round(max(latency.values()), 3)}


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB (Linux /proc), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None
    return round(kb / 1024, 1)
