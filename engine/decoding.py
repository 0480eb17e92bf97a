"""Pipelined parallel decoding (D2F Algorithm 2) on block state and logits; no model code here.

One iteration = one forward: add -> activate -> forward (elsewhere) -> decode -> finish.
"""
from __future__ import annotations

import torch

from .sequence import Block, Knobs, Sequence


def wants_block(seq: Sequence) -> bool:
    """Add rule: room for another answer block, no EOS yet, and the last block far enough along."""
    if seq.eos_seen or len(seq.blocks) >= seq.max_blocks():
        return False
    ratio = seq.blocks[-1].decoded_ratio if seq.blocks else 1.0  # the prompt block is fully decoded
    return ratio >= seq.knobs.tau_add


def add_block(seq: Sequence) -> None:
    size = seq.knobs.block_size
    seq.blocks.append(Block(start=seq.end, size=size, masked=size))
    seq.tokens.extend([seq.mask_id] * size)
    seq.is_masked.extend([True] * size)


def activate(seq: Sequence) -> None:
    """Block b+1 becomes fully activated (sticky) once block b is decoded past tau_act."""
    prev_ratio = 1.0
    for blk in seq.blocks:
        if prev_ratio >= seq.knobs.tau_act:
            blk.fully_activated = True
        prev_ratio = blk.decoded_ratio


def masked_positions(seq: Sequence) -> list[int]:
    """Every still-masked position of the active blocks, in order: what this forward must predict."""
    out = []
    for blk in seq.blocks[seq.first_active():]:
        if blk.masked:
            out.extend(p for p in range(blk.start, blk.end) if seq.is_masked[p])
    return out


def choose(logits: torch.Tensor, knobs: Knobs, generator: torch.Generator | None):
    """fp32 logits [n, V] -> (token ids [n], confidences [n]), confidence = p(x0) after filtering."""
    if knobs.temperature > 0:
        logits = logits / knobs.temperature
    if knobs.top_k and knobs.top_k < logits.shape[-1]:
        kth = torch.topk(logits, knobs.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if knobs.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the mass before it already reaches top_p; the best token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= knobs.top_p
        drop_sorted[:, 0] = False  # explicit: a top_p below fp32's smallest number would drop everything
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    if knobs.temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        conf = probs.gather(-1, x0[:, None]).squeeze(-1)
    else:
        conf, x0 = probs.max(-1)
    return x0, conf


def commit(seq: Sequence, positions: list[int], x0: torch.Tensor, conf: torch.Tensor) -> int:
    """Decode step for every active block from one forward's predictions; returns tokens committed."""
    knobs = seq.knobs
    ids, confs = x0.tolist(), conf.tolist()
    by_pos = {p: i for i, p in enumerate(positions)}
    committed = 0
    for blk in seq.blocks[seq.first_active():]:
        if not blk.masked:
            continue
        rows = [by_pos[p] for p in range(blk.start, blk.end) if seq.is_masked[p]]
        chosen = [r for r in rows if confs[r] > knobs.tau_conf]  # strictly greater, in fp32
        if knobs.force_leftmost:
            if rows[0] == 0 and chosen[:1] != [0]:  # positions[0] is the sequence's leftmost mask
                chosen.insert(0, 0)
        elif not chosen and blk.fully_activated:
            chosen = [max(rows, key=lambda r: confs[r])]  # first of equals, like argmax
        for r in chosen:
            pos, tok = positions[r], ids[r]
            seq.tokens[pos] = tok
            seq.is_masked[pos] = False
            if tok in knobs.stop_ids:
                seq.eos_seen = True
        blk.masked -= len(chosen)
        committed += len(chosen)
    return committed


def finish_blocks(seq: Sequence) -> None:
    """Blocks with no masks become done (to_cache) in order; a later one waits for an active predecessor."""
    for blk in seq.blocks[seq.num_done:]:
        if blk.masked:
            break
        seq.num_done += 1


def check_finished(seq: Sequence) -> tuple[list[int], str | None]:
    """(final answer tokens known so far, finish reason or None), cut at the first stop token or max_tokens."""
    knobs = seq.knobs
    ready = min(seq.finished_prefix(), knobs.max_tokens)
    answer = seq.tokens[seq.prompt_len:seq.prompt_len + ready]
    for i in range(seq.scanned, ready):  # final tokens never change: each is checked once
        if answer[i] in knobs.stop_ids:
            return answer[:i], "stop"
    seq.scanned = ready
    if ready == knobs.max_tokens:
        return answer, "length"
    return answer, None


def emit_boundary(seq: Sequence) -> int:
    """Answer tokens in whole done blocks: what may be streamed (one chunk per committed block)."""
    if seq.num_done == 0:
        return 0
    return seq.blocks[seq.num_done - 1].end - seq.prompt_len
