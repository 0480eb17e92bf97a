"""Training examples: text files, JSONL prompt/answer pairs (text or token ids), and their batching.

An example is (prompt ids, answer ids). D2F needs a non-empty prompt: shifted-logit models predict the first
answer token from the last prompt row.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .masking import block_causal_mask, causal_mask, full_mask, mask_answer, sample_block_ratios


@dataclass(slots=True)
class Example:
    prompt: list[int]
    answer: list[int]


class DataError(ValueError):
    """Bad training or prompt data; the message names the file and line."""


def encode_prompt(tok, text: str, chat: bool) -> list[int]:
    if chat:
        return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False))
    return list(tok.encode(text))


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object")
        rows.append(row)
    return rows


def load_prompts(path, tok=None, chat: bool = False) -> list[list[int]]:
    """A prompt set: JSONL rows with "prompt_ids" or "prompt", or a text file with one prompt per line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        texts = []
        for n, row in enumerate(read_jsonl(path), 1):
            if "prompt_ids" in row:
                texts.append(_ids(row["prompt_ids"], path, n))
            elif isinstance(row.get("prompt"), str):
                texts.append(row["prompt"])
            else:
                raise DataError(f"{path}:{n}: needs 'prompt' or 'prompt_ids'")
    else:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for t in texts:
        if isinstance(t, str):
            if tok is None:
                raise DataError(f"{path}: text prompts need a tokenizer in the model directory; give prompt_ids")
            t = encode_prompt(tok, t, chat)
        if not t:
            raise DataError(f"{path}: empty prompt")
        out.append(t)
    return out


def _ids(value, path: Path, n: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(x, int) and x >= 0 for x in value):
        raise DataError(f"{path}:{n}: token ids must be a list of non-negative integers")
    return value


def load_examples(spec: str, tok, eos_id: int, chat: bool = False, seq_len: int = 256) -> list[Example]:
    """--data SPEC: one or more comma-separated paths; *.jsonl are prompt/answer pairs, anything else is text.

    JSONL answers given as text get EOS appended (the model must learn to stop); answers given as ids are
    taken as they are (`d2f refurbish data` already ends them with EOS). Text files are cut into windows of
    seq_len tokens whose first quarter is the prompt, so the model learns to continue text.
    """
    examples: list[Example] = []
    for part in [p for p in spec.split(",") if p]:
        path = Path(part)
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        for f in files:
            if not f.is_file():
                raise DataError(f"{f}: file not found")
            if f.suffix == ".jsonl":
                examples += _pairs(f, tok, eos_id, chat)
            else:
                examples += _text_windows(f, tok, seq_len)
    if not examples:
        raise DataError(f"{spec}: no training examples")
    return examples


def _pairs(path: Path, tok, eos_id: int, chat: bool) -> list[Example]:
    out = []
    for n, row in enumerate(read_jsonl(path), 1):
        if "prompt_ids" in row and "answer_ids" in row:
            prompt, answer = _ids(row["prompt_ids"], path, n), _ids(row["answer_ids"], path, n)
        elif isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str):
            if tok is None:
                raise DataError(f"{path}:{n}: text pairs need a tokenizer in the teacher directory")
            prompt = encode_prompt(tok, row["prompt"], chat)
            answer = list(tok.encode(row["answer"], add_special_tokens=False)) + [eos_id]
        else:
            raise DataError(f"{path}:{n}: needs prompt/answer strings or prompt_ids/answer_ids lists")
        if not prompt or not answer:
            raise DataError(f"{path}:{n}: empty prompt or answer")
        out.append(Example(prompt, answer))
    return out


def _text_windows(path: Path, tok, seq_len: int) -> list[Example]:
    if tok is None:
        raise DataError(f"{path}: text data needs a tokenizer in the teacher directory")
    ids = list(tok.encode(path.read_text(encoding="utf-8"), add_special_tokens=False))
    head = max(1, seq_len // 4)
    return [Example(ids[i:i + head], ids[i + head:i + seq_len]) for i in range(0, len(ids) - head - 1, seq_len)]


def fit(example: Example, max_len: int, block_size: int, eos_id: int) -> tuple[list[int], int]:
    """(prompt + answer ids, prompt length), cut to max_len. An answer that ends in EOS is padded with EOS to
    whole blocks, as the engine decodes whole blocks and keeps predicting EOS after the first one."""
    prompt = example.prompt[-max(1, max_len // 2):]  # keep the end of a long prompt: it is what is answered
    answer = example.answer
    if answer and answer[-1] == eos_id:
        answer = answer + [eos_id] * (-len(answer) % block_size)
    answer = answer[:max(1, max_len - len(prompt))]
    return prompt + answer, len(prompt)


@dataclass(slots=True)
class Batch:
    ids: torch.Tensor           # [B, L] clean tokens (right-padded)
    noisy: torch.Tensor         # [B, L] with answer tokens masked
    masked: torch.Tensor        # [B, L] bool
    ratio: torch.Tensor         # [B, L] the mask ratio of each token's block
    student_mask: torch.Tensor  # [B, 1, L, L] bool block-causal
    teacher_mask: torch.Tensor  # [B, 1, L, L] bool: full (dLLM teacher on noisy) or causal (AR teacher on clean)
    num_tokens: int


def collate(examples: list[Example], *, block_size: int, lo: float, hi: float, mask_id: int, eos_id: int,
            pad_id: int, max_len: int, prompt_causal: bool, ar_teacher: bool, generator: torch.Generator) -> Batch:
    rows = [fit(e, max_len, block_size, eos_id) for e in examples]
    length = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    noisy, masked = ids.clone(), torch.zeros(ids.shape, dtype=torch.bool)
    ratio = torch.ones(ids.shape)
    smask, tmask = [], []
    for i, (seq, plen) in enumerate(rows):
        n = len(seq)
        t = torch.tensor(seq)
        blocks = -(-(n - plen) // block_size)
        ratios = sample_block_ratios(max(blocks, 1), lo, hi, generator)
        nz, m, p = mask_answer(t, plen, block_size, ratios, mask_id, generator)
        ids[i, :n], noisy[i, :n], masked[i, :n], ratio[i, :n] = t, nz, m, p
        smask.append(block_causal_mask(length, plen, block_size, prompt_causal, valid=n))
        tmask.append(causal_mask(length, valid=n) if ar_teacher else full_mask(length, valid=n))
    return Batch(ids, noisy, masked, ratio, torch.stack(smask)[:, None], torch.stack(tmask)[:, None],
                 sum(len(s) for s, _ in rows))


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Examples of global step `step`: epochs are seeded permutations, so a resumed run sees what an
    uninterrupted one would have seen."""
    out = []
    for k in range(step * batch_size, (step + 1) * batch_size):
        epoch, pos = divmod(k, num_examples)
        order = list(range(num_examples))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.append(order[pos])
    return out
