"""Student and teacher set-up: the mask token, LoRA wrapping, and the teacher's forward.

One model serves as both when training LoRA from the teacher's own weights: the teacher is the same module
with the adapter disabled, so an 8B base is held once.
"""
from __future__ import annotations

import contextlib
import re

import torch
from peft import LoraConfig, get_peft_model

from .hfmodel import load_hf

HF_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# Unused special tokens that can serve as the mask, best first (SmolLM2 ships <empty_output>, id 16).
MASK_CANDIDATES = (r"^<\|?mask\|?>$", r"^\[MASK\]$", r"^<empty_output>$", r"reserved_special_token", r"unused")


def choose_mask_token(spec, tok, request: str = "auto") -> tuple[int, bool]:
    """(mask id, whether it is a new vocabulary row). request: auto | new | an id."""
    if request not in ("auto", "new"):
        try:
            mask = int(request)
        except ValueError:
            raise ValueError(f"--mask-token must be auto, new or a token id, got {request!r}") from None
        if not 0 <= mask < spec.vocab_size:
            raise ValueError(f"--mask-token {mask} is outside the vocabulary [0, {spec.vocab_size})")
        return mask, False
    if request == "auto":
        if spec.mask_token_id is not None:
            return spec.mask_token_id, False
        found = _unused_special(spec, tok)
        if found is not None:
            return found, False
    return spec.vocab_size, True


def _unused_special(spec, tok) -> int | None:
    if tok is None:
        return None
    reserved = set(spec.eos_token_ids) | {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    if getattr(tok, "mask_token_id", None) is not None and tok.mask_token_id < spec.vocab_size:
        return tok.mask_token_id
    specials = {tid: str(t) for tid, t in getattr(tok, "added_tokens_decoder", {}).items()}
    for pattern in MASK_CANDIDATES:
        for tid in sorted(specials):
            if tid not in reserved and tid < spec.vocab_size and re.search(pattern, specials[tid]):
                return tid
    return None


def add_mask_row(model, spec) -> None:
    """Append one embedding (and head) row, the mean of the existing ones: the new token starts neutral, and
    deterministically (a resumed LoRA run rebuilds the very same row)."""
    old = spec.vocab_size
    model.resize_token_embeddings(old + 1, mean_resizing=False)
    with torch.no_grad():
        for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            layer.weight[old] = layer.weight[:old].mean(0)
    spec.vocab_size = old + 1


def wrap_lora(model, rank: int, alpha: float | None, dropout: float):
    cfg = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                     target_modules=HF_LORA_TARGETS, bias="none")
    return get_peft_model(model, cfg)


def causal_lm(model):
    """The transformers CausalLM inside a PEFT wrapper (adapters stay injected in its modules)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return causal_lm(model).model(input_ids=ids, attention_mask=mask).last_hidden_state


def row_logits(model, hidden: torch.Tensor, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return causal_lm(model).lm_head(hidden[b, rows])


class Teacher:
    """Soft targets: a dLLM teacher reads the noisy sequence with full attention; an AR teacher reads the
    clean sequence causally (its prediction at t is p(x_t | clean prefix))."""

    def __init__(self, model, shared: bool, ar: bool):
        self.model, self.shared, self.ar = model, shared, ar

    @torch.no_grad()
    def logits(self, batch, b: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ids = batch.ids if self.ar else batch.noisy
        ctx = self.model.disable_adapter() if self.shared else contextlib.nullcontext()
        with ctx:
            return row_logits(self.model, hidden_states(self.model, ids, batch.teacher_mask), b, rows)


def load_teacher(path: str, dtype: torch.dtype):
    _, _, model = load_hf(path, dtype)
    model.eval().requires_grad_(False)
    return model
