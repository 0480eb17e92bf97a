"""EngineConfig: built once, validated here, handed to every engine part."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass(slots=True)
class EngineConfig:
    model: str = field(metadata={"help": "checkpoint directory, or smollm2 / smollm2-d2f: the embedded model as "
                                         "AR / as D2F (default: the embedded default)"})
    lora: str | None = field(default=None, metadata={"help": "PEFT LoRA adapter directory, merged at load"})
    dtype: str = field(default="auto", metadata={
        "help": "auto: bf16 on CUDA and on CPUs with native bf16 matmuls, else fp32",
        "choices": ("auto", *DTYPES), "metavar": "{auto,fp32,bf16,fp16}"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | cuda:N"})
    # KV pool: an explicit byte budget wins; otherwise a fraction of free GPU memory, or 1 GiB on CPU.
    kv_cache_memory: int | None = field(default=None, metadata={
        "help": "KV cache budget in bytes (default 1 GiB on CPU, half the free GPU memory)"})
    gpu_memory_fraction: float = field(default=0.5, metadata={
        "help": "share of the GPU memory free after loading that the KV cache takes"})
    page_size: int = field(default=16, metadata={"help": "tokens per KV cache page"})
    max_num_seqs: int = field(default=64, metadata={"help": "sequences decoded together"})
    max_num_batched_tokens: int = field(default=2048, metadata={
        "help": "tokens per forward (long causal prompts are chunked to this)"})
    max_model_len: int | None = field(default=None, metadata={"help": "context limit (default: the model's)"})
    quantization: str = field(default="none", metadata={
        "help": "weight-only quantization of every layer's matrices: none | int8 (per output channel) | int4 "
                "(groups of 32; the embedded model's own Q4_1 blocks). The head stays in --dtype",
        "choices": ("none", "int8", "int4")})
    seed: int = field(default=0, metadata={"help": "sampling seed of requests that bring none"})

    def __post_init__(self):
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, fp32, bf16, fp16, got {self.dtype!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device cuda requested but torch sees no CUDA device")
        for name in ("page_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_cache_memory is not None and self.kv_cache_memory < 1:
            raise ValueError(f"kv_cache_memory must be positive bytes, got {self.kv_cache_memory}")
        if self.quantization not in ("none", "int8", "int4"):
            raise ValueError(f"quantization must be none, int8 or int4, got {self.quantization!r}")
        if not 0.0 < self.gpu_memory_fraction <= 1.0:
            raise ValueError(f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}")

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if self.device.startswith("cuda"):
            return torch.bfloat16
        # On CPU bf16 only pays where the CPU has native bf16 matmuls (AVX512-BF16/AMX); on plain
        # AVX2, torch emulates bf16 GEMM and a 16-token window costs 2-4x the fp32 one.
        from .models.linear import onednn_supported

        return torch.bfloat16 if onednn_supported(torch.bfloat16, "cpu") else torch.float32

    def kv_budget_bytes(self) -> int:
        if self.kv_cache_memory is not None:
            return self.kv_cache_memory
        if self.device.startswith("cuda"):  # CUDA only: size from what is free after the weights loaded
            free, _ = torch.cuda.mem_get_info(torch.device(self.device))
            return int(free * self.gpu_memory_fraction)
        return 1 << 30
