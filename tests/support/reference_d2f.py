"""A deliberately plain D2F decoder, written from the spec's text: every iteration recomputes the
whole sequence from scratch with a dense block-causal mask and full logits. No KV cache, no
packing, no paging, no early exit: the yardstick the engine's cached decoding must match.
"""
from __future__ import annotations

import math

import torch

from d2f.engine.models.decoder import AttnBatch, KVCache, SeqWindow


def full_logits(model, tokens: list[int], prompt_len: int, block: int, prompt_causal: bool,
                is_masked: list[bool] | None = None) -> torch.Tensor:
    """is_masked given: the AR-preserving rule (a clean token sees only clean tokens up to itself) and the
    model's mask adapter at masked positions."""
    n = len(tokens)
    block_id = []
    for p in range(n):
        if p < prompt_len:
            block_id.append(-(prompt_len - p) if prompt_causal else -1)  # causal prompt: one block per token
        else:
            block_id.append((p - prompt_len) // block)
    bid = torch.tensor(block_id)
    mask = bid[None, :] <= bid[:, None]  # a token sees its own block and every earlier block
    rows = None
    if is_masked is not None:
        m = torch.tensor(is_masked)
        clean_rule = torch.ones(n, n, dtype=torch.bool).tril() & ~m[None, :]
        mask = torch.where(m[:, None], mask, clean_rule)
        rows = m.nonzero().flatten()
    dev = model.device
    kv = KVCache(model.spec, n, model.dtype, dev)
    ar = torch.arange(n, device=dev)
    batch = AttnBatch(positions=ar, write_slots=ar, windows=[SeqWindow(n, ar, mask.to(dev)[None, None])],
                      adapter_rows=None if rows is None else rows.to(dev))
    hidden = model(torch.tensor(tokens, device=dev), batch, kv)
    return model.logits(hidden)


def reference_decode(model, prompt: list[int], *, block: int, tau_add: float, tau_act: float, tau_conf: float,
                     max_tokens: int, mask_id: int, stop_ids: set[int],
                     record: dict | None = None) -> tuple[list[int], int]:
    """Greedy D2F. Returns (answer up to the first stop token / max_tokens, forwards used). With record, also
    fills record[position] = log-probability of the token committed there, in the forward that committed it."""
    spec = model.spec
    x = list(prompt)
    is_m = [False] * len(x)  # tracked apart from x: a committed token may equal mask_id
    blocks = [{"start": 0, "size": len(prompt), "state": "to_cache", "full": True}]  # block 0 = prompt
    masked = lambda b: sum(1 for p in range(b["start"], b["start"] + b["size"]) if is_m[p])  # noqa: E731
    ratio = lambda b: (b["size"] - masked(b)) / b["size"]  # noqa: E731
    eos_seen, forwards = False, 0
    while True:
        if len(blocks) - 1 < math.floor(-(-max_tokens // block)) and not eos_seen and ratio(blocks[-1]) >= tau_add:
            blocks.append({"start": len(x), "size": block, "state": "active", "full": False})
            x.extend([mask_id] * block)
            is_m.extend([True] * block)
        for i in range(len(blocks) - 1):
            if ratio(blocks[i]) >= tau_act:
                blocks[i + 1]["full"] = True
        if all(masked(b) == 0 for b in blocks) and not any(b["state"] == "active" for b in blocks):
            break
        logits = full_logits(model, x, len(prompt), block, spec.prompt_causal,
                             is_m if spec.ar_preserving else None)
        forwards += 1
        for b in blocks:
            if b["state"] == "to_cache":
                b["state"] = "in_cache"
        leftmost = is_m.index(True) if True in is_m else None  # before this step's commits
        for b in blocks:
            if b["state"] != "active":
                continue
            pos = [p for p in range(b["start"], b["start"] + b["size"]) if is_m[p]]
            if not pos:
                continue
            rows = logits[[p - 1 if spec.shift_logits else p for p in pos]]
            probs = torch.softmax(rows.float(), dim=-1)
            conf, x0 = probs.max(dim=-1)
            pick = [i for i in range(len(pos)) if conf[i].item() > tau_conf]
            if spec.ar_preserving:  # the leftmost mask of the sequence is always committed
                if pos[0] == leftmost and 0 not in pick:
                    pick.append(0)
            elif not pick and b["full"]:
                pick = [int(torch.argmax(conf))]
            for i in pick:
                x[pos[i]], is_m[pos[i]] = int(x0[i]), False
                if record is not None:
                    record[pos[i]] = torch.log_softmax(rows.float(), dim=-1)[i, int(x0[i])].item()
                eos_seen |= int(x0[i]) in stop_ids
        earlier_active = False
        for b in blocks[1:]:
            if b["state"] == "active" and masked(b) == 0 and not earlier_active:
                b["state"] = "to_cache"
            earlier_active |= b["state"] == "active"
    answer = x[len(prompt):][:max_tokens]
    for i, t in enumerate(answer):
        if t in stop_ids:
            return answer[:i], forwards
    return answer, forwards
