"""Read a local checkpoint directory (config.json + safetensors, optional PEFT LoRA) into tensors.

Nothing is fetched from a hub: every path is local and every failure is one CheckpointError line.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .families import CheckpointError, source_names, spec_from_config
from .spec import ModelSpec


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_spec(model_dir: str | os.PathLike) -> tuple[ModelSpec, dict]:
    root = Path(model_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root}: model directory not found")
    cfg = _read_json(root / "config.json")
    return spec_from_config(cfg, str(root / "config.json")), cfg


def _weight_files(root: Path) -> dict[str, Path]:
    """Tensor name -> file holding it, from the shard index or the files themselves."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: missing 'weight_map'")
        return {name: root / fname for name, fname in weight_map.items()}
    files = sorted(root.glob("*.safetensors"))
    files = [f for f in files if f.name != "adapter_model.safetensors"]
    if not files:
        raise CheckpointError(f"{root}: no *.safetensors weights found")
    located: dict[str, Path] = {}
    for f in files:
        for name in _keys(f):
            located[name] = f
    return located


def _keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None


class _Reader:
    """Opens each safetensors file once and hands out tensors by name."""

    def __init__(self, files: dict[str, Path]):
        self.files = files
        self.handles: dict[Path, object] = {}

    def get(self, name: str) -> torch.Tensor:
        path = self.files.get(name)
        if path is None:
            raise CheckpointError(f"{next(iter(self.files.values()), '?')}: missing tensor {name!r}")
        if path not in self.handles:
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in the index is missing")
            try:
                self.handles[path] = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
        try:
            return self.handles[path].get_tensor(name)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} ({exc})") from None


def read_lora(lora_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """PEFT adapter -> {base tensor name: fp32 delta (scale * B @ A)}."""
    root = Path(lora_dir)
    cfg_path = root / "adapter_config.json"
    cfg = _read_json(cfg_path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("fan_in_fan_out"):
        raise CheckpointError(f"{cfg_path}: fan_in_fan_out adapters are not supported")
    try:
        r = int(cfg["r"])
        alpha = float(cfg.get("lora_alpha", r))
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{cfg_path}: needs integer 'r' and numeric 'lora_alpha'") from None
    scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    weights_path = root / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: file not found")
    reader = _Reader({k: weights_path for k in _keys(weights_path)})
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key in reader.files:
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                base = key.split(marker)[0].removeprefix("base_model.model.")
                pairs.setdefault(base, {})[part] = reader.get(key).float()
                break
        else:
            raise CheckpointError(f"{weights_path}: unsupported adapter tensor {key!r} (only LoRA A/B)")
    deltas = {}
    for base, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{weights_path}: {base} lacks lora_A or lora_B")
        deltas[base + ".weight"] = scale * (ab["lora_B"] @ ab["lora_A"])
    return deltas


def load_weights(model_dir, spec: ModelSpec, dtype: torch.dtype, device: str,
                 lora_dir=None) -> dict[str, torch.Tensor]:
    """Internal name -> tensor in dtype on device, LoRA merged in fp32 before the cast."""
    root = Path(model_dir)
    reader = _Reader(_weight_files(root))
    deltas = read_lora(lora_dir) if lora_dir else {}
    names = source_names(spec)
    unused = set(deltas) - set(names.values())
    if unused:
        raise CheckpointError(f"{lora_dir}: adapter targets tensors the model lacks, e.g. {sorted(unused)[0]!r}")
    out = {}
    for ours, theirs in names.items():
        tensor = reader.get(theirs)
        if theirs in deltas:
            delta = deltas[theirs]
            if delta.shape != tensor.shape:
                raise CheckpointError(f"{lora_dir}: delta for {theirs} has shape {tuple(delta.shape)}, "
                                      f"weight has {tuple(tensor.shape)}")
            tensor = tensor.float() + delta
        out[ours] = tensor.to(device=device, dtype=dtype)
    _check_shapes(out, spec, root)
    return out


def _check_shapes(w: dict[str, torch.Tensor], spec: ModelSpec, root: Path) -> None:
    h = spec.hidden_size
    expect = {"embed": (spec.vocab_size, h), "norm": (h,)}
    if "lm_head" in w:
        expect["lm_head"] = (spec.vocab_size, h)
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        expect.update({p + name: shape for name, shape in spec.projection_shapes().items()})
        expect.update({p + "attn_norm": (h,), p + "mlp_norm": (h,)})
    for name, shape in expect.items():
        if tuple(w[name].shape) != shape:
            raise CheckpointError(f"{root}: tensor {name} has shape {tuple(w[name].shape)}, config implies {shape}")


def link_or_copy(src: Path, dst: Path) -> None:
    """A checkpoint file in a second directory: a hard link on the same disk (no second copy of the
    weights), a copy elsewhere."""
    try:
        dst.hardlink_to(src)
    except OSError:
        shutil.copy2(src, dst)
