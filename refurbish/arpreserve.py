"""`d2f refurbish --ar-preserving`: an AR model becomes a D2F model without losing its AR answers.

The base weights stay frozen and clean positions never see a mask, so every clean position computes
exactly what the AR model computes; the logit that predicts the leftmost mask is the AR model's. What
is trained is a small adapter that only acts where the input is a mask (LoRA on every projection plus
the mask's input vector): from the clean prefix up to position a, a mask at position j > a learns the
AR model's own next-token distribution at j (soft targets), that is, to guess 2..B tokens ahead.

One training example packs the clean sequence (one no-grad pass of the base model, which is also the
teacher) and many mask spans, each anchored at a random answer position, with the attention the engine
uses at inference: a mask sees clean tokens up to its anchor and the masks of its own and earlier blocks
of its span. Spans imitate the engine's windows: the leftmost mask sits anywhere in its block, and half
the time the next block is open too.
"""
from __future__ import annotations

import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from d2f.engine.models.checkpoint import link_or_copy, load_weights, read_spec
from d2f.engine.models.layer import FUSED, fused_weights, layer_forward, rms_norm, rope_tables
from d2f.engine.models.mask_adapter import FILE as ADAPTER_FILE
from d2f.engine.models.spec import ModelSpec

from .data import DataError, read_jsonl
from .hfmodel import copy_tokenizer
from .loop import run_training


@dataclass
class Config:
    teacher: str
    data: str
    out: str
    block_sizes: tuple[int, ...] = (2, 4)
    block_size: int = 4          # recorded as the model's default
    mask_token: int = 16
    rank: int = 32
    lr: float = 1e-3
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 4
    anchors: int = 24            # mask spans per example
    max_len: int = 256
    save_every: int = 50
    seed: int = 0
    init_from: str | None = None
    adapt: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")  # projections with an adapter
    load_optimizer: bool = True   # with init_from: continue AdamW's moments too
    save_optimizer: bool = True
    dtype: str = "fp32"           # bf16: matmuls under autocast (adapter and AdamW stay fp32)


class Student(torch.nn.Module):
    """Frozen base weights (fp32) + the trainable mask adapter, with the two passes training needs.

    The layers are the engine's own layer body (d2f.engine.models.layer) with a plain masked SDPA and
    differentiable projections; the per-projection base weights are taken out of w, fused as the engine
    fuses them."""

    def __init__(self, spec: ModelSpec, w: dict[str, torch.Tensor], rank: int, mask_id: int, seed: int,
                 adapt: tuple[str, ...] | None = None):
        super().__init__()
        shapes = spec.projection_shapes()
        self.adapt = tuple(shapes) if adapt is None else tuple(adapt)
        unknown = sorted(set(self.adapt) - set(shapes))
        if unknown or not self.adapt:
            raise ValueError(f"--adapt: expected some of {','.join(shapes)}, got {','.join(self.adapt) or 'none'}")
        self.spec, self.rank = spec, rank
        g = torch.Generator().manual_seed(seed)
        self.a = torch.nn.ParameterDict()
        self.b = torch.nn.ParameterDict()
        for li in range(spec.num_layers):
            for name, (o, i) in shapes.items():
                if name not in self.adapt:
                    continue
                key = f"layers_{li}_{name}"  # a ParameterDict key cannot hold dots
                # B starts at zero: the untrained adapter is the base model fed a mask vector.
                self.a[key] = torch.nn.Parameter(torch.randn(rank, i, generator=g) / math.sqrt(i))
                self.b[key] = torch.nn.Parameter(torch.zeros(o, rank))
        self.mask_embed = torch.nn.Parameter(w["embed"][mask_id].clone())
        self.layers = [{"attn_norm": w[f"layers.{li}.attn_norm"], "mlp_norm": w[f"layers.{li}.mlp_norm"],
                        **fused_weights(spec, w, li)} for li in range(spec.num_layers)]
        self.w = w  # what is left: embeddings, final norm, head
        self.cos, self.sin = rope_tables(spec)

    def _base(self, li: int, fname: str, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.layers[li][fname]
        return F.linear(x, weight, bias)

    def _delta(self, li: int, part: str, x: torch.Tensor) -> torch.Tensor:
        key = f"layers_{li}_{part}"
        if key in self.a:
            return F.linear(F.linear(x, self.a[key]), self.b[key])
        return x.new_zeros(x.shape[0], self.spec.projection_shape(part)[0])

    def _adapted(self, li: int, fname: str, x: torch.Tensor) -> torch.Tensor:
        parts = FUSED[fname]
        if not any(p in self.adapt for p in parts):
            return self._base(li, fname, x)
        deltas = [self._delta(li, p, x) for p in parts]
        return self._base(li, fname, x) + (deltas[0] if len(deltas) == 1 else torch.cat(deltas, dim=-1))

    def _forward(self, h, pos, attend, adapt: bool):
        """Every layer on rows h at positions pos, then the final norm; attend(li, q, k, v) as in layer_forward."""
        spec, linear = self.spec, self._adapted if adapt else self._base
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        for li, layer in enumerate(self.layers):
            h = layer_forward(spec, li, layer["attn_norm"], layer["mlp_norm"], h, cos, sin, attend, linear)
        return rms_norm(h, self.w["norm"], spec.rms_eps)

    @staticmethod
    def _sdpa(q, k, v, mask):
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             attn_mask=mask, enable_gqa=True)
        return out.transpose(0, 1).reshape(q.shape[0], -1)

    @torch.no_grad()
    def clean(self, ids, pos, mask):
        """The base model on clean tokens: per-layer K/V and the final hidden states (the teacher)."""
        kvs = []

        def attend(li, q, k, v):
            kvs.append((k, v))
            return self._sdpa(q, k, v, mask)
        return kvs, self._forward(F.embedding(ids, self.w["embed"]), pos, attend, adapt=False)

    def masks(self, n, pos, kvs, mask):
        """n mask rows at positions pos attending to [clean keys | mask keys] under mask; final hidden states."""
        def attend(li, q, k, v):
            ck, cv = kvs[li]
            return self._sdpa(q, torch.cat([ck, k]), torch.cat([cv, v]), mask)
        return self._forward(self.mask_embed.expand(n, -1), pos, attend, adapt=True)

    def head(self, h):
        return F.linear(h, self.w.get("lm_head", self.w["embed"]))

    def _pairs(self):
        """(the adapter file's name for a projection, its A, its B), e.g. layers.3.gate."""
        for li in range(self.spec.num_layers):
            for name in self.spec.projection_shapes():
                if name in self.adapt:
                    yield f"layers.{li}.{name}", self.a[f"layers_{li}_{name}"], self.b[f"layers_{li}_{name}"]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The engine's mask_adapter.safetensors: B carries the scale (alpha = rank, so 1)."""
        out = {"mask_embed": self.mask_embed.detach().clone()}
        for name, a, b in self._pairs():
            out[f"{name}.lora_A"] = a.detach().clone()
            out[f"{name}.lora_B"] = b.detach().clone()
        return out

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Takes what the state has of this adapter's projections (an earlier adapter may act on more or
        fewer of them); returns the projections that kept their fresh start."""
        fresh = []
        with torch.no_grad():
            self.mask_embed.copy_(state["mask_embed"])
            for name, a, b in self._pairs():
                if f"{name}.lora_A" not in state:
                    fresh.append(name)
                    continue
                if state[f"{name}.lora_A"].shape != a.shape or state[f"{name}.lora_B"].shape != b.shape:
                    raise ValueError(f"--init-from: {name} has rank {state[f'{name}.lora_A'].shape[0]}, "
                                     f"this run {a.shape[0]}")
                a.copy_(state[f"{name}.lora_A"])
                b.copy_(state[f"{name}.lora_B"])
        return fresh


def load_pairs(path: str, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, answer) ids; an answer cut by the teacher's max_tokens loses the EOS `--keep-truncated` gave it."""
    out = []
    for n, row in enumerate(read_jsonl(Path(path)), 1):
        if not isinstance(row.get("prompt_ids"), list) or not isinstance(row.get("answer_ids"), list):
            raise DataError(f"{path}:{n}: needs prompt_ids and answer_ids (from `d2f refurbish data`)")
        answer = row["answer_ids"][:-1] if row.get("finish_reason") == "length" else row["answer_ids"]
        prompt = row["prompt_ids"][-(max_len // 2):]
        answer = answer[:max_len - len(prompt)]
        if len(answer) >= 3:
            out.append((prompt, answer))
    if not out:
        raise DataError(f"{path}: no usable examples")
    return out


class Span(NamedTuple):
    example: int
    offset: int           # the example's first row among the packed clean tokens
    anchor: int           # last clean position the span's masks see
    block_size: int
    first: int            # where the leftmost mask sits in its block
    rows: list[tuple[int, int]]  # (position, block index within the span)


class Packed(NamedTuple):
    ids: torch.Tensor          # [N] clean tokens of every example
    positions: torch.Tensor    # [N]
    clean_mask: torch.Tensor   # [N, N] causal within each example
    mask_positions: torch.Tensor  # [M]
    mask_mask: torch.Tensor    # [M, N + M]: keys are clean rows then mask rows
    targets: torch.Tensor      # [M] clean row whose teacher distribution each mask learns
    spans: list[Span]


def build_batch(pairs, rng: random.Random, cfg: Config) -> Packed:
    """Packed clean tokens of every example and their mask spans, with both attention masks."""
    ids, pos, ex_of, spans = [], [], [], []
    offset = 0
    for e, (prompt, answer) in enumerate(pairs):
        seq = prompt + answer
        t = len(seq)
        ids += seq
        pos += range(t)
        ex_of += [e] * t
        p = len(prompt)
        # Anchor a: the last clean position before the span; its mask j predicts token j + 1 (shifted).
        for a in rng.sample(range(p - 1, t - 2), min(cfg.anchors, t - 1 - p)):
            bs = rng.choice(cfg.block_sizes)
            first = rng.randrange(bs)  # where the leftmost mask sits in its block
            length = bs - first + (bs if rng.random() < 0.5 else 0)
            js = [j for j in range(a + 1, a + 1 + length) if j + 1 < t]
            if js:
                spans.append(Span(e, offset, a, bs, first, [(j, (j - a - 1 + first) // bs) for j in js]))
        offset += t
    n_clean = len(ids)
    ex = torch.tensor(ex_of)
    cpos = torch.tensor(pos)
    clean_mask = (ex[:, None] == ex[None, :]) & (cpos[None, :] <= cpos[:, None])
    mpos, targets, span_of, block_of, anchor_key = [], [], [], [], []
    for s, (e, off, a, _, _, rows) in enumerate(spans):
        for j, blk in rows:
            mpos.append(j)
            targets.append(off + j)  # the clean row whose teacher distribution predicts token j + 1
            span_of.append(s)
            block_of.append(blk)
            anchor_key.append(off + a)
    span_t, block_t = torch.tensor(span_of), torch.tensor(block_of)
    keys = torch.arange(n_clean)
    ex_start = torch.tensor([spans[s].offset for s in span_of])
    to_clean = (keys[None, :] >= ex_start[:, None]) & (keys[None, :] <= torch.tensor(anchor_key)[:, None])
    to_masks = (span_t[:, None] == span_t[None, :]) & (block_t[None, :] <= block_t[:, None])
    return Packed(torch.tensor(ids), cpos, clean_mask, torch.tensor(mpos), torch.cat([to_clean, to_masks], dim=1),
                  torch.tensor(targets), spans)


def mask_logits(student: Student, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """(student logits at every mask row, teacher probabilities for the same rows)."""
    kvs, clean_h = student.clean(batch.ids, batch.positions, batch.clean_mask)
    with torch.no_grad():
        teacher = F.softmax(student.head(clean_h.index_select(0, batch.targets)).float(), dim=-1)
    m = batch.mask_positions.shape[0]
    return student.head(student.masks(m, batch.mask_positions, kvs, batch.mask_mask)), teacher


def loss_on(student: Student, batch: Packed) -> tuple[torch.Tensor, int]:
    """Soft cross-entropy against the AR model's own distribution, per mask row."""
    logits, teacher = mask_logits(student, batch)
    return -(teacher * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean(), logits.shape[0]


OPTIMIZER_FILE = "adapter_optimizer.pt"


def save(student: Student, cfg: Config, step: int, spec: ModelSpec, raw: dict, log: list,
         opt: torch.optim.Optimizer | None = None) -> None:
    """A directory the engine loads as it is: the base's config with the d2f section, its weights and
    tokenizer (hard-linked when possible), and the adapter."""
    out, base = Path(cfg.out), Path(cfg.teacher)
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        if (f.suffix == ".safetensors" or f.name.endswith(".index.json")) and not (out / f.name).exists():
            link_or_copy(f, out / f.name)
    copy_tokenizer(base, out)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in student.adapter_state().items()}
    tmp = out / (ADAPTER_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"step": str(step), "rank": str(cfg.rank)})
    tmp.chmod(0o644)  # readable by a server running as another user (the container does)
    tmp.replace(out / ADAPTER_FILE)
    if opt is not None and cfg.save_optimizer:
        # A resumed run continues exactly: AdamW's moments and the fp32 adapter (the served file is bf16).
        torch.save({"adapt": list(student.adapt), "rank": cfg.rank, "state": opt.state_dict(),
                    "adapter": student.adapter_state()}, out / (OPTIMIZER_FILE + ".tmp"))
        (out / (OPTIMIZER_FILE + ".tmp")).replace(out / OPTIMIZER_FILE)
    d2f = {"mask_token_id": cfg.mask_token, "ar_preserving": True, "train_block_size": 1,
           "block_size": cfg.block_size, "tau_add": 0.5, "tau_act": 0.9, "tau_conf": 0.9}
    cfg_out = dict(raw)
    cfg_out["d2f"] = {**d2f, **(cfg_out.get("d2f") or {}), "ar_preserving": True, "mask_token_id": cfg.mask_token}
    (out / "config.json").write_text(json.dumps(cfg_out, indent=1))
    (out / "d2f.json").write_text(json.dumps({"refurbished_from": str(base), "mode": "ar-preserving",
                                              "step": step, "config": {k: v for k, v in vars(cfg).items()},
                                              "log": log[-200:]}, indent=1, default=str))


def train(cfg: Config, stream=sys.stderr) -> int:
    torch.manual_seed(cfg.seed)
    spec, raw = read_spec(cfg.teacher)
    if cfg.dtype not in ("fp32", "bf16"):
        raise ValueError(f"--ar-preserving trains in fp32 or bf16, not {cfg.dtype}")
    if spec.family not in ("llama", "qwen2"):
        raise ValueError(f"--ar-preserving needs a Llama/Qwen2 (AR) teacher, got {spec.family}")
    if not 0 <= cfg.mask_token < spec.vocab_size:
        raise ValueError(f"--mask-token {cfg.mask_token} is outside the vocabulary")
    weights = load_weights(cfg.teacher, spec, torch.float32, "cpu")
    student = Student(spec, weights, cfg.rank, cfg.mask_token, cfg.seed, cfg.adapt)
    step, log = 0, []
    pairs = load_pairs(cfg.data, cfg.max_len)
    params = list(student.a.values()) + list(student.b.values()) + [student.mask_embed]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.init_from:
        start = Path(cfg.init_from)
        saved = start / OPTIMIZER_FILE
        ckpt = torch.load(saved, weights_only=True) if cfg.load_optimizer and saved.is_file() else None
        if ckpt is not None and (ckpt["adapt"] != list(student.adapt) or ckpt["rank"] != cfg.rank):
            print("--init-from: its optimizer state is for another adapter shape: starting AdamW fresh", file=stream)
            ckpt = None
        # The fp32 adapter of the resumable state when it is used, else the served (bf16) file.
        state = ckpt["adapter"] if ckpt is not None else \
            {k: v.float() for k, v in load_file(str(start / ADAPTER_FILE)).items()}
        fresh = student.load_adapter_state(state)
        if fresh:
            print(f"--init-from: {len(fresh)} projections start fresh (e.g. {fresh[0]})", file=stream)
        if ckpt is not None:
            opt.load_state_dict(ckpt["state"])
            for group in opt.param_groups:
                group["lr"] = cfg.lr
        info = start / "d2f.json"
        step = json.loads(info.read_text()).get("step", 0) if info.is_file() else 0

    def train_step() -> tuple[float, int]:
        nonlocal step
        rng = random.Random(cfg.seed * 1_000_003 + step)  # the batch of a step depends only on seed and step
        batch = build_batch([pairs[i] for i in rng.sample(range(len(pairs)), min(cfg.batch_size, len(pairs)))],
                            rng, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bf16"):
            loss, m = loss_on(student, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        log.append({"step": step, "loss": round(loss.item(), 4)})
        return loss.item(), m

    code = run_training(train_step, lambda: save(student, cfg, step, spec, raw, log, opt), lambda: step,
                        cfg.steps, cfg.minutes, cfg.save_every, stream)
    print(f"saved the AR-preserving D2F model at step {step} to {cfg.out}", file=stream)
    return code
