"""The refurbish loop: build student and teacher, then step, log, checkpoint, stop on steps/minutes/Ctrl-C.

Two modes, chosen from the teacher's family:
  distill  (LLaDA, Dream): asymmetric distillation, the teacher is the dLLM with full attention on the noisy
           sequence (D2F paper, Algorithm 1);
  ar       (Llama, Qwen2): the student starts as the AR model with a mask token; the AR teacher reads the
           clean prefix and gives soft targets for every masked position, optionally mixed with CE on the
           true tokens.
Each step's data and noise are seeded by (seed, step), so a resumed run continues exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from d2f.engine.config import DTYPES
from d2f.engine.models.checkpoint import read_spec
from d2f.engine.tokenizer import load_tokenizer

from . import losses
from .data import batch_indices, collate, load_examples
from .hfmodel import load_hf
from .output import read_state, remove_stale, restore, save_output
from .loop import run_training
from .student import Teacher, add_mask_row, choose_mask_token, hidden_states, load_teacher, row_logits, wrap_lora

# peft asks transformers about gradient checkpointing through a name transformers 5 deprecates.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

DEFAULT_LR = {"llada": 1e-5, "dream": 5e-6}  # the D2F reference's settings
DEFAULT_LR_AR = {"lora": 1e-4, "full": 1e-5}  # no reference: LoRA on a small AR model needs a larger step


@dataclass
class TrainConfig:
    teacher: str
    out: str
    data: str
    student_init: str | None = None
    block_size: int = 16
    mask_lo: float = 0.2
    mask_hi: float = 0.7
    lora_rank: int | None = 32  # None: full fine-tuning
    lora_alpha: float | None = None
    lora_dropout: float = 0.1
    steps: int | None = None
    minutes: float | None = None
    lr: float | None = None
    seed: int = 0
    init_from: str | None = None
    load_optimizer: bool = True
    save_optimizer: bool = True
    batch_size: int = 4
    max_len: int = 256
    save_every: int = 100
    hard_weight: float = 0.0  # AR mode: weight of CE on the true tokens mixed with the distillation loss
    mask_token: str = "auto"
    chat: bool = False
    save: str = "auto"  # auto | adapter | merged
    dtype: str = "fp32"
    device: str = "cpu"
    log: list = field(default_factory=list)

    def verify(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"--block-size must be >= 1, got {self.block_size}")
        if not 0.0 < self.mask_lo <= self.mask_hi <= 1.0:
            raise ValueError(f"--mask-ratio needs 0 < LO <= HI <= 1, got {self.mask_lo},{self.mask_hi}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise ValueError(f"--lora-rank must be >= 1, got {self.lora_rank}")
        if self.steps is not None and self.steps < 1 or self.minutes is not None and self.minutes <= 0:
            raise ValueError("--steps must be >= 1 and --minutes > 0")
        if not 0.0 <= self.hard_weight <= 1.0:
            raise ValueError(f"--hard-weight must be in [0, 1], got {self.hard_weight}")
        if self.save not in ("auto", "adapter", "merged"):
            raise ValueError(f"--save must be auto, adapter or merged, got {self.save!r}")
        if self.save == "adapter" and self.lora_rank is None:
            raise ValueError("--save adapter needs LoRA (not --full)")


class Refurbisher:
    def __init__(self, cfg: TrainConfig):
        cfg.verify()
        self.cfg = cfg
        self.dtype = DTYPES[cfg.dtype]
        self.resume = read_state(Path(cfg.init_from)) if cfg.init_from else None
        teacher_spec, _ = read_spec(cfg.teacher)
        self.ar = teacher_spec.family in ("llama", "qwen2")
        self.tok = load_tokenizer(cfg.teacher)
        init = cfg.student_init
        if self.resume and cfg.lora_rank is None:
            init = cfg.init_from  # a --full run's weights are the output itself
        self.spec, self.raw, model = load_hf(init or cfg.teacher, self.dtype)
        self.eos_id = (teacher_spec.eos_token_ids or [0])[0]
        self.mask_id, added = self._mask_token(teacher_spec)
        if added:
            add_mask_row(model, self.spec)
        self.spec.mask_token_id = self.mask_id
        shared = cfg.lora_rank is not None and init is None
        if cfg.lora_rank is not None:
            torch.manual_seed(cfg.seed)  # LoRA A is drawn from the global RNG: same seed, same run
            model = wrap_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
        self.model = model.to(cfg.device).train()
        teacher_model = self.model if shared else load_teacher(cfg.teacher, self.dtype).to(cfg.device)
        self.teacher = Teacher(teacher_model, shared=shared, ar=self.ar)
        self.save_mode = self._save_mode(teacher_spec, added)
        lr = cfg.lr or (DEFAULT_LR_AR["full" if cfg.lora_rank is None else "lora"] if self.ar
                        else DEFAULT_LR.get(teacher_spec.family, 1e-5))
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
        self.step = 0
        if self.resume:
            self.step = int(self.resume["step"])
            cfg.log = list(self.resume.get("log", []))
            restore(Path(cfg.init_from), self.model, self.optimizer, cfg.load_optimizer)
        self.examples = load_examples(cfg.data, self.tok, self.eos_id, cfg.chat, cfg.max_len)

    def _mask_token(self, teacher_spec) -> tuple[int, bool]:
        if self.resume:  # the mask token of the run being continued, whatever the flags say
            mask = int(self.resume["d2f"]["mask_token_id"])
            return mask, mask >= self.spec.vocab_size
        if not self.ar:
            if teacher_spec.mask_token_id is None:
                raise ValueError(f"{self.cfg.teacher}: dLLM config has no mask_token_id")
            return teacher_spec.mask_token_id, False
        return choose_mask_token(self.spec, self.tok, self.cfg.mask_token)

    def _save_mode(self, teacher_spec, added: bool) -> str:
        if self.cfg.lora_rank is None:
            return "merged"
        if self.cfg.save != "auto":
            return self.cfg.save
        # An adapter is enough only if the teacher's own config already describes the D2F model.
        fits = (not added and self.cfg.student_init is None and teacher_spec.mask_token_id == self.mask_id
                and teacher_spec.train_block_size == self.cfg.block_size)
        return "adapter" if fits else "merged"

    @property
    def d2f_section(self) -> dict:
        return {"mask_token_id": self.mask_id, "train_block_size": self.cfg.block_size,
                "block_size": self.cfg.block_size, "tau_add": 0.1, "tau_act": 0.95, "tau_conf": 0.9,
                "prompt_causal": self.spec.prompt_causal, "refurbished_from": str(Path(self.cfg.teacher).resolve()),
                "mode": "ar" if self.ar else "distill"}

    def make_batch(self, step: int):
        cfg = self.cfg
        idx = batch_indices(len(self.examples), cfg.batch_size, step, cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        return collate([self.examples[i] for i in idx], block_size=cfg.block_size, lo=cfg.mask_lo,
                       hi=cfg.mask_hi, mask_id=self.mask_id, eos_id=self.eos_id, pad_id=self.eos_id,
                       max_len=cfg.max_len, prompt_causal=self.spec.prompt_causal, ar_teacher=self.ar,
                       generator=gen)

    def loss(self, batch) -> torch.Tensor:
        dev = self.cfg.device
        batch = dataclasses.replace(batch, **{k: getattr(batch, k).to(dev) for k in
                                              ("ids", "noisy", "masked", "ratio", "student_mask", "teacher_mask")})
        b, rows, t = losses.predictor_rows(batch.masked, self.spec.shift_logits)
        ratio = batch.ratio[b, t]
        student = row_logits(self.model, hidden_states(self.model, batch.noisy, batch.student_mask), b, rows)
        teacher = self.teacher.logits(batch, b, rows).float()
        if teacher.shape[-1] < student.shape[-1]:  # the student grew a mask row the teacher never had
            teacher = torch.cat([teacher, teacher.new_full((teacher.shape[0], student.shape[-1] - teacher.shape[-1]),
                                                           float("-inf"))], dim=-1)
        teacher[:, self.mask_id] = float("-inf")  # the mask is an input, never an answer
        loss = losses.distill_loss(student, teacher, ratio)
        if self.ar and self.cfg.hard_weight > 0:
            hard = losses.hard_loss(student, batch.ids[b, t], ratio)
            loss = (1 - self.cfg.hard_weight) * loss + self.cfg.hard_weight * hard
        return loss

    def train_step(self) -> tuple[float, int]:
        torch.manual_seed(self.cfg.seed * 104729 + self.step)  # LoRA dropout, reproducible across resumes
        batch = self.make_batch(self.step)
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.step += 1
        value = float(loss.detach())
        self.cfg.log.append([self.step, round(value, 6)])
        return value, batch.num_tokens

    def save(self) -> None:
        out = Path(self.cfg.out)
        remove_stale(out, self.save_mode)
        args = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k != "log"}
        state = {"step": self.step, "d2f": self.d2f_section, "save_mode": self.save_mode, "args": args,
                 "log": self.cfg.log}
        save_output(out, self.model, self.spec, self.raw, self.d2f_section, teacher=self.cfg.teacher,
                    save_mode=self.save_mode, dtype=self._save_dtype(), state=state,
                    optimizer=self.optimizer if self.cfg.save_optimizer else None)

    def _save_dtype(self) -> torch.dtype:
        """LoRA runs keep their trainable state in training/adapter, so merged weights can go back to the
        teacher's stored precision (half the disk for a bf16 base); --full weights are the training state."""
        stored = self.raw.get("torch_dtype") or self.raw.get("dtype")
        if self.cfg.lora_rank is not None and stored in DTYPES:
            return DTYPES[stored]
        return self.dtype

    def run(self, stream=None) -> int:
        """Train until --steps or --minutes; Ctrl-C saves and returns 130. Returns a process exit code."""
        cfg = self.cfg
        return run_training(self.train_step, self.save, lambda: self.step, cfg.steps, cfg.minutes,
                            cfg.save_every, stream)
