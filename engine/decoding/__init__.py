"""Decoding algorithms: one object per family of rules. The model's spec picks its default; a request for
exact mode on an AR-preserving model runs under Verified."""
from __future__ import annotations

from ..models.spec import ModelSpec
from .ar_preserving import ARPreserving
from .base import Algorithm
from .d2f import D2F
from .verified import Verified

__all__ = ["Algorithm", "ARPreserving", "D2F", "Verified", "for_spec"]


def for_spec(spec: ModelSpec) -> Algorithm:
    """AR-preserving checkpoints decode by their own rules; D2F (LLaDA, Dream) and pure AR models by
    Algorithm 2 (an AR model's knobs force one commit per forward)."""
    return ARPreserving() if spec.ar_preserving else D2F()
