"""`d2f bench gpu`: what scripts/gpu_check.sh measures on a GPU, as one JSON object.

The device's copy bandwidth, then per model shape (random weights drawn on the device, no file): each forward
over a cached prefix against the HBM roofline (the bytes it must read over the measured bandwidth),
single-stream decode as AR and at each D2F preset, aggregate tokens/s at several concurrencies, and how far a
matmul row moves with the rows beside it. With --out the JSON is rewritten after every section, so a run cut
short keeps what it measured. `--device cpu --shapes tiny` runs it in seconds, for its tests.

Random weights give near-uniform predictions, so a D2F preset commits about one token per forward here: its
tokens/s is the cost of D2F's wider windows, not the speed-up a trained model's confident blocks buy.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field

import torch

from d2f.bench.shapes import SHAPES, random_model
from d2f.bench.speed import decode_tok_s, forward_ms, gemv_floor_ms
from d2f.engine.cli_args import add_dataclass_arguments, from_args
from d2f.engine.config import EngineConfig
from d2f.engine.engine import Engine
from d2f.engine.kv_cache import bytes_per_token
from d2f.engine.models.layer import FUSED
from d2f.engine.params import SPEED_PRESETS, DecodeParams, speed_to_taus
from d2f.engine.timing import device_sync, median_ms, stepped

ROW_COUNTS = (1, 8, 16, 33)  # rows computed alone, against the same rows inside a batch of 64


@dataclass
class GpuBench:
    engine: EngineConfig
    shapes: list[str] = field(default_factory=lambda: ["smollm2", "7b"], metadata={
        "help": f"model shapes to measure, of {', '.join(SHAPES)} (7b: Dream-7B / Qwen2.5-7B dimensions)"})
    cache_len: int = field(default=1000, metadata={"help": "cached prefix tokens under the timed forwards"})
    windows: list[int] = field(default_factory=lambda: [1, 4, 16, 32], metadata={
        "help": "window sizes of the timed forwards"})
    prompt_len: int = field(default=42, metadata={"help": "prompt tokens of the decode runs"})
    max_tokens: int = field(default=64, metadata={"help": "tokens generated per request"})
    concurrency: list[int] = field(default_factory=lambda: [1, 16, 64], metadata={
        "help": "concurrent requests of each batched round"})
    copy_mib: int = field(default=1024, metadata={"help": "MiB copied to measure the memory bandwidth"})
    out: str | None = field(default=None, metadata={"help": "also write the JSON to this file, after every section"})
    budget_s: float = field(default=0, metadata={
        "help": "seconds after which the sections not yet begun are skipped and listed under over_budget (0: none)"})

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes or len(set(self.shapes)) < len(self.shapes):
            raise ValueError(f"shapes must be distinct ones of {', '.join(SHAPES)}, got {','.join(self.shapes) or 'none'}")
        for name in ("windows", "concurrency"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be integers >= 1, got {getattr(self, name)}")
        for name in ("cache_len", "prompt_len", "max_tokens", "copy_mib"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.budget_s >= 0:
            raise ValueError(f"budget_s must be >= 0, got {self.budget_s}")


def add_arguments(p) -> None:
    add_dataclass_arguments(p, EngineConfig, include=("device", "dtype", "quantization", "kv_cache_memory"),
                            defaults={"kv_cache_memory": 1 << 30})
    add_dataclass_arguments(p, GpuBench)


def config(args) -> GpuBench:
    # Room for the largest round; a bad concurrency is GpuBench's to refuse, by its own name.
    engine = from_args(EngineConfig, args, model="<random weights>", max_num_seqs=max([1, *args.concurrency]),
                       max_num_batched_tokens=8192)
    return from_args(GpuBench, args, engine=engine)


def copy_bandwidth_gb_s(device: torch.device, mib: int, repeat: int = 20) -> float:
    """One big device-to-device copy: bytes read plus bytes written, over the median time."""
    n = mib << 20
    src = torch.ones(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), repeat, device_sync(device))
    return round(2 * n / ms / 1e6, 1)


def weight_bytes(model) -> int:
    """Bytes of weights one forward reads: every layer's matmuls and the head (of the embedding, only its rows)."""
    spec, elsize = model.spec, model.dtype.itemsize
    head = spec.vocab_size * spec.hidden_size * elsize
    if model.quantization == "none":
        return head + spec.num_layers * elsize * sum(o * i for o, i in spec.projection_shapes().values())
    return head + sum(layer[name].weight_bytes for layer in model.layers for name in FUSED)


def row_drift(linear, x: torch.Tensor) -> dict:
    """Rows computed alone against the same rows inside all of x: zero where the kernel gives a row the same
    bits whatever the row count (tests/gpu bounds it; this says by how much on real shapes)."""
    whole = linear(x).float()
    worst = max((linear(x[s:s + n]).float() - whole[s:s + n]).abs().max().item()
                for n in ROW_COUNTS for s in (0, x.shape[0] - n))
    return {"bitwise": worst == 0, "max_abs": worst, "relative": worst / whole.abs().max().item()}


def _prompt(n: int, vocab: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, min(vocab, 49000), (n,), generator=g).tolist()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()


def _params(cfg: GpuBench) -> dict[str, DecodeParams]:
    """AR (block size 1) and each D2F preset, every one running to max_tokens."""
    params = {"ar": DecodeParams(max_tokens=cfg.max_tokens, block_size=1, ignore_eos=True)}
    for preset, speed in SPEED_PRESETS.items():
        conf, act = speed_to_taus(speed)
        params[preset] = DecodeParams(max_tokens=cfg.max_tokens, tau_conf=conf, tau_act=act, ignore_eos=True)
    return params


def forwards(cfg: GpuBench, engine: Engine, bandwidth_gb_s: float, r: dict) -> None:
    """Row drift, the GEMV floor and each window's forward against the roofline: the weights plus the cached
    keys and values the window reads, at the measured bandwidth."""
    model, spec = engine.model, engine.spec
    weights, kv_token = weight_bytes(model), bytes_per_token(spec, model.dtype)
    r |= {"layers": spec.num_layers, "hidden": spec.hidden_size, "vocab": spec.vocab_size,
          "weight_bytes": weights, "kv_bytes_per_token": kv_token}
    x = torch.randn(64, spec.hidden_size, generator=torch.Generator().manual_seed(1)).to(model.device, model.dtype)
    r["row_drift"] = {"qkv": row_drift(model.layers[0]["qkv"], x), "head": row_drift(model.lm_head, x)}
    r["gemv_floor_ms"] = gemv_floor_ms(engine)
    r["gemv_floor_over_roofline"] = round(r["gemv_floor_ms"] / (weights / (bandwidth_gb_s * 1e6)), 2)
    roof = {str(w): (weights + kv_token * (cfg.cache_len + w)) / (bandwidth_gb_s * 1e6) for w in cfg.windows}
    fwd = forward_ms(engine, cfg.cache_len, cfg.windows)
    r["fwd_ms"] = fwd
    r["roofline_ms"] = {w: round(ms, 4) for w, ms in roof.items()}
    r["fwd_over_roofline"] = {w: round(fwd[w] / roof[w], 2) for w in fwd}


def _write(result: dict, path: str | None) -> None:
    if path:  # whole or not at all: a reader never sees half a file
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, path)


def run(cfg: GpuBench) -> dict:
    """Section by section over every shape (forwards, then decode, then batched rounds), so a run that meets
    its time budget or its timeout has the cheap, central numbers of every shape first."""
    t0 = time.perf_counter()
    device = torch.device(cfg.engine.device)
    result = {"benchmark": "gpu", "device": str(device), "device_name": _device_name(device),
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "dtype": str(cfg.engine.torch_dtype).removeprefix("torch."), "quantization": cfg.engine.quantization,
              "weights": "random, drawn on the device", "cache_len": cfg.cache_len, "windows": cfg.windows,
              "prompt_tokens": cfg.prompt_len, "max_tokens": cfg.max_tokens, "concurrency": cfg.concurrency,
              "copy_bandwidth_gb_s": copy_bandwidth_gb_s(device, cfg.copy_mib), "shapes": {}}

    def save() -> None:
        result["seconds"] = round(time.perf_counter() - t0, 1)
        if device.type == "cuda":
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        _write(result, cfg.out)

    def in_budget() -> bool:
        return not cfg.budget_s or time.perf_counter() - t0 < cfg.budget_s

    save()
    engines = {}
    for name in cfg.shapes:  # all at once: a 7B model and SmolLM2 together take ~16 GB of a GPU's memory
        spec, model = random_model(SHAPES[name](), cfg.engine.torch_dtype, cfg.engine.device,
                                   quantization=cfg.engine.quantization)
        engines[name] = Engine(cfg.engine, model=(spec, model))
        result["shapes"][name] = {}
    params = _params(cfg)
    # (where in a shape's result, how): the forwards fill the shape's result itself
    sections = [((), lambda e, r: forwards(cfg, e, result["copy_bandwidth_gb_s"], r))]
    sections += [(("decode", mode), lambda e, r, p=p: decode_tok_s(e, _prompt(cfg.prompt_len, e.spec.vocab_size), p))
                 for mode, p in params.items()]
    sections += [(("batch", mode, str(conc)), lambda e, r, mode=mode, conc=conc: stepped(
        e, [_prompt(cfg.prompt_len, e.spec.vocab_size, seed=i) for i in range(conc)], params[mode]))
        for mode in ("ar", "balanced") for conc in cfg.concurrency]
    for path, measure in sections:
        for name, engine in engines.items():
            r = result["shapes"][name]
            if not in_budget():
                r.setdefault("over_budget", []).append(" ".join(path) or "forwards")
                continue
            value = measure(engine, r)
            if path:
                slot = r
                for key in path[:-1]:
                    slot = slot.setdefault(key, {})
                slot[path[-1]] = value
            save()
    return result
