"""Per-request decoding knobs. Plain dataclass: the server maps RequestError to HTTP 400."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import RequestError
from .logprobs import MAX_LOGPROBS

# The paper's trade-off points (Dream, GSM8K): tau_act = tau_conf in {0.95, 0.9, 0.85}.
SPEED_PRESETS = {"quality": 0.0, "balanced": 0.5, "fast": 1.0}
# Not a point on that curve: drafts checked against the AR model (AR-preserving models only).
EXACT = "exact"
MAX_DRAFT_WIDTH = 8  # each candidate is a row; the 8th is the AR token far too rarely to pay for it


def speed_to_taus(speed: float) -> tuple[float, float]:
    """Map speed in [0, 1] monotonically onto (tau_conf, tau_act): 0 -> 0.95, 0.5 -> 0.9, 1 -> 0.85."""
    # Rounded so the presets are the documented 0.95 / 0.9 / 0.85, not 0.8999999999999999.
    tau = round(0.95 - 0.10 * speed, 6)
    return tau, tau


def speed_fields(speed: str | float) -> dict:
    """DecodeParams fields for a speed: a preset name, exact, or a number in [0, 1]."""
    if speed == EXACT:
        return {"exact": True}
    conf, act = speed_to_taus(SPEED_PRESETS[speed] if isinstance(speed, str) else float(speed))
    return {"tau_conf": conf, "tau_act": act}


@dataclass(slots=True)
class DecodeParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    # D2F knobs; None = the model's recommended value.
    block_size: int | None = None
    tau_add: float | None = None
    tau_act: float | None = None
    tau_conf: float | None = None
    # Log-probabilities (engine/logprobs.py): None = not recorded; k = also the k most likely alternatives.
    logprobs: int | None = None         # of every answer token, from the forward that committed it
    prompt_logprobs: int | None = None  # of prompt tokens 1.. under a causal prompt (token 0 has none)
    # Hand out a StepRecord per forward (what the playground draws); off, nothing is recorded.
    record_steps: bool = False
    # Exact mode: mask rows draft, the AR rows of the next forward verify (AR-preserving models).
    exact: bool = False
    # Exact mode, greedy: the drafter's top tokens for each forward's first draft, the runner-ups run as
    # candidate rows that draft what follows them; None = the model's default. Sampling ignores it (the
    # speculative rule is for one draft per position).
    draft_width: int | None = None

    def verify(self) -> None:
        """Raise RequestError naming the bad field; never assert on user input."""
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_LOGPROBS):
                raise RequestError(f"{name} must be an integer in [0, {MAX_LOGPROBS}], got {k!r}")
        lowest = 0 if self.prompt_logprobs is not None else 1  # 0 tokens: score the prompt alone
        if not isinstance(self.max_tokens, int) or self.max_tokens < lowest:
            raise RequestError(f"max_tokens must be an integer >= 1 (0 only to score the prompt), "
                               f"got {self.max_tokens!r}")
        _finite("temperature", self.temperature, 0.0, 100.0)
        _finite("top_p", self.top_p, 0.0, 1.0)
        if self.top_p <= 0.0:
            raise RequestError("top_p must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise RequestError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise RequestError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1):
            raise RequestError(f"block_size must be an integer >= 1, got {self.block_size!r}")
        for name in ("tau_add", "tau_act", "tau_conf"):
            value = getattr(self, name)
            if value is not None:
                _finite(name, value, 0.0, 1.0)
        if not isinstance(self.exact, bool):
            raise RequestError(f"exact must be true or false, got {self.exact!r}")
        if self.exact and any(getattr(self, n) is not None for n in ("tau_add", "tau_act", "tau_conf")):
            raise RequestError("tau_add, tau_act and tau_conf do not apply to exact mode (speed 'exact'): "
                               "every token is the AR model's")
        if self.draft_width is not None and (isinstance(self.draft_width, bool) or not isinstance(self.draft_width, int)
                                             or not 1 <= self.draft_width <= MAX_DRAFT_WIDTH):
            raise RequestError(f"draft_width must be an integer in [1, {MAX_DRAFT_WIDTH}], got {self.draft_width!r}")
        if self.draft_width is not None and not self.exact:
            raise RequestError("draft_width applies to exact mode only (speed 'exact')")
        for tok in self.stop_token_ids:
            if not isinstance(tok, int) or tok < 0:
                raise RequestError(f"stop_token_ids must be non-negative integers, got {tok!r}")


def _finite(name: str, value, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be in [{lo}, {hi}], got {value!r}")
