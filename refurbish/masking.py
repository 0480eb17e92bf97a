"""Block-wise monotone noise and the attention masks of D2F training."""
from __future__ import annotations

import torch


def sample_block_ratios(num_blocks: int, lo: float = 0.2, hi: float = 0.7,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Non-decreasing per-block mask ratios in [lo, hi].

    Reference (lo=0.2, hi=0.7): p1 = U/2 + 0.2, then cumulative increments of U' * (0.7 - p1) / (N - 1).
    Other bounds scale the same draw: p1 = lo + U * (hi - lo). Later blocks are noisier because at
    inference they are still being drafted while earlier ones are nearly done.
    """
    if not 0.0 < lo <= hi <= 1.0:  # the loss divides by the ratio
        raise ValueError(f"mask ratios need 0 < lo <= hi <= 1, got {lo}, {hi}")
    u = torch.rand(2, generator=generator, dtype=torch.float64)
    first = lo + u[0] * (hi - lo)
    ratios = first.expand(num_blocks).clone()
    if num_blocks > 1:
        step = u[1] * (hi - first) / (num_blocks - 1)
        ratios = first + step * torch.arange(num_blocks, dtype=torch.float64)
    return ratios.clamp(lo, hi).float()


def mask_answer(ids: torch.Tensor, prompt_len: int, block_size: int, ratios: torch.Tensor, mask_id: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask each answer token of block b with probability ratios[b]; the prompt is never touched.

    Returns (noisy ids, masked flags, per-token ratio: 1 outside the answer). At least one token is masked
    so every example contributes to the loss.
    """
    n = ids.shape[0]
    pos = torch.arange(n)
    block = ((pos - prompt_len).clamp(min=0) // block_size).clamp(max=len(ratios) - 1)
    p = torch.where(pos >= prompt_len, ratios[block], torch.ones(n))
    draw = torch.rand(n, generator=generator)
    masked = (draw < p) & (pos >= prompt_len)
    if not masked.any() and n > prompt_len:
        answer_draw = torch.where(pos >= prompt_len, draw, torch.full((n,), 2.0))
        masked[int(answer_draw.argmin())] = True
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    return noisy, masked, p


def visible_end(length: int, prompt_len: int, block_size: int, prompt_causal: bool) -> torch.Tensor:
    """Per query position, the first key position it may NOT see (block-causal, as the engine decodes)."""
    pos = torch.arange(length)
    answer_end = prompt_len + ((pos - prompt_len).clamp(min=0) // block_size + 1) * block_size
    prompt_end = pos + 1 if prompt_causal else torch.full_like(pos, prompt_len)
    return torch.where(pos < prompt_len, prompt_end, answer_end)


def block_causal_mask(length: int, prompt_len: int, block_size: int, prompt_causal: bool,
                      valid: int | None = None) -> torch.Tensor:
    """[L, L] bool, True = may attend. Keys at or past `valid` (right padding) are hidden from real tokens;
    padding queries see themselves so no softmax row is empty."""
    end = visible_end(length, prompt_len, block_size, prompt_causal)
    keys = torch.arange(length)
    allowed = keys[None, :] < end[:, None]
    if valid is not None and valid < length:
        allowed[:, valid:] = False
        allowed[valid:, :] = False
        allowed[torch.arange(valid, length), torch.arange(valid, length)] = True
    return allowed


def full_mask(length: int, valid: int | None = None) -> torch.Tensor:
    """The dLLM teacher's full attention, with right padding hidden the same way."""
    return block_causal_mask(length, 0, max(length, 1), False, valid)


def causal_mask(length: int, valid: int | None = None) -> torch.Tensor:
    """The AR teacher reads the clean sequence causally."""
    return block_causal_mask(length, length, 1, True, valid)
