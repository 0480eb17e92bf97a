"""What a refurbish run writes, and what --init-from reads back.

out/config.json + model.safetensors   merged weights in the family's names (the engine loads the dir as is)
  or out/adapter_config.json + adapter_model.safetensors   a PEFT adapter over the teacher (d2f generate
     --model TEACHER --lora OUT), when the teacher's own config already describes the D2F model
out/d2f.json                           the "d2f" section, also inside config.json when merged
out/training/state.json, optimizer.pt, adapter/   what resuming needs (adapter/ in transformers' names)
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .hfmodel import copy_tokenizer, family_state, family_target_modules, lora_module_names, save_checkpoint

TRAINING_DIR = "training"


def merged_state(model) -> dict[str, torch.Tensor]:
    """transformers-named weights with every LoRA delta added, without touching the live model."""
    if not hasattr(model, "get_base_model"):
        return {k: v.detach() for k, v in model.state_dict().items()}
    base = model.get_base_model()
    state = {k.replace(".base_layer", ""): v.detach().clone() for k, v in base.state_dict().items()
             if "lora_" not in k}
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            with torch.no_grad():
                state[name + ".weight"] += module.get_delta_weight("default").to(state[name + ".weight"].dtype)
    return state


def save_output(out: Path, model, spec, raw_config: dict, d2f: dict, *, teacher: str, save_mode: str,
                dtype: torch.dtype, state: dict, optimizer=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if save_mode == "adapter":
        _save_family_adapter(out, model, spec, teacher)
    else:
        save_checkpoint(out, merged_state(model), spec, raw_config, d2f, dtype)
    (out / "d2f.json").write_text(json.dumps(d2f, indent=1))
    copy_tokenizer(teacher, out)
    train = out / TRAINING_DIR
    train.mkdir(exist_ok=True)
    if hasattr(model, "get_base_model"):
        adapter = train / "adapter"
        adapter.mkdir(exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(adapter / "adapter_model.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), train / "optimizer.pt")
    (train / "state.json").write_text(json.dumps(state, indent=1))


def _save_family_adapter(out: Path, model, spec, teacher: str) -> None:
    """PEFT's own files, renamed to the family's module names (LLaDA: blocks.N.q_proj ... attn_out)."""
    rename = lora_module_names(spec)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tensors = load_file(str(Path(tmp) / "adapter_model.safetensors"))
        cfg = json.loads((Path(tmp) / "adapter_config.json").read_text())
    renamed = {}
    for key, t in tensors.items():
        prefix, _, rest = key.partition("base_model.model.")
        module, _, tail = rest.rpartition(".lora_")
        renamed[f"{prefix}base_model.model.{rename.get(module, module)}.lora_{tail}"] = t.contiguous()
    cfg["target_modules"] = family_target_modules(spec)
    cfg["base_model_name_or_path"] = str(Path(teacher).resolve())
    save_file(renamed, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=1))


def read_state(init_from: Path) -> dict:
    path = init_from / TRAINING_DIR / "state.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; --init-from needs the output directory of a refurbish run")
    return json.loads(path.read_text())


def restore(init_from: Path, model, optimizer, load_optimizer: bool) -> bool:
    """Adapter weights (LoRA runs) and, if present and wanted, the optimizer; True if the optimizer was loaded."""
    train = init_from / TRAINING_DIR
    if hasattr(model, "get_base_model"):
        weights = train / "adapter" / "adapter_model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: not found; was the run being resumed a --full run?")
        result = set_peft_model_state_dict(model, load_file(str(weights)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{weights}: adapter does not fit this model ({result.unexpected_keys[:2]})")
    opt = train / "optimizer.pt"
    if load_optimizer and opt.is_file():
        optimizer.load_state_dict(torch.load(opt, weights_only=True))
        return True
    return False


def remove_stale(out: Path, save_mode: str) -> None:
    """A previous run into the same dir may have left the other kind of output; the engine must not mix them."""
    stale = ("config.json", "model.safetensors") if save_mode == "adapter" else (
        "adapter_config.json", "adapter_model.safetensors")
    for name in stale:
        f = out / name
        if f.is_file():
            f.unlink()
