"""D2F training losses on masked positions, each token's term divided by its block's mask ratio.

Dividing by the ratio is the masked-diffusion ELBO weight: a lightly masked block contributes few tokens,
each standing for more of the sequence. Losses work on gathered rows, so the vocabulary projection runs
only where a token is predicted (a full [B, L, V] logit tensor is most of a small model's memory).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def predictor_rows(masked: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch index, hidden row, target position) of every masked token.

    Shifted-logit models (Dream, AR) predict token t from row t - 1; LLaDA from row t. Position 0 is never
    masked (the prompt is non-empty), so t - 1 always exists.
    """
    b, t = masked.nonzero(as_tuple=True)
    return b, (t - 1 if shift else t), t


def soft_ce(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of the student against the teacher's probabilities, in fp32."""
    target = F.softmax(teacher_logits.float(), dim=-1)
    return -(target * F.log_softmax(student_logits.float(), dim=-1)).sum(-1)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of CE(student, teacher probabilities) / p_block. Inputs: [N, V], [N, V], [N]."""
    return (soft_ce(student_logits, teacher_logits) / ratio).mean()


def hard_loss(student_logits: torch.Tensor, targets: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of CE(student, true token) / p_block."""
    return (F.cross_entropy(student_logits.float(), targets, reduction="none") / ratio).mean()
