"""A PEFT LoRA adapter merged at load equals the unmerged PEFT model."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from d2f.engine.models.families import CheckpointError
from d2f.engine.models.loader import load_model
from tests.support import checkpoints as ck
from tests.support.forward import IDS, causal_mask, full_forward
from tests.support.lora import peft_model


def _causal():
    return causal_mask(len(IDS))


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_llama_lora_equals_unmerged_peft(tmp_path, rslora):
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=31))
    lora = peft_model(ck.hf_llama(seed=31), rslora)
    lora.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        ref = lora(torch.tensor([IDS])).logits[0]
        plain = lora.get_base_model()
        with lora.disable_adapter():
            without = plain(torch.tensor([IDS])).logits[0]
    _, ours = load_model(base, lora_dir=tmp_path / "adapter")
    got = full_forward(ours, IDS, _causal())
    assert (ref - without).abs().max() > 1e-2  # the adapter really changes the model
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_llada_adapter_uses_llada_module_names(tmp_path):
    """Released D2F-LLaDA adapters target q_proj/k_proj/v_proj/attn_out under model.transformer.blocks."""
    hf = ck.hf_llama(seed=32)
    base = ck.write_llada(tmp_path / "llada", hf)
    lora = peft_model(ck.hf_llama(seed=32))
    lora.save_pretrained(tmp_path / "adapter")
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    renamed = {}
    for key, t in adapter.items():
        key = key.replace("model.model.layers.", "model.model.transformer.blocks.")
        key = key.replace(".self_attn.o_proj.", ".attn_out.").replace(".self_attn.", ".")
        renamed[key] = t
    save_file(renamed, str(tmp_path / "adapter" / "adapter_model.safetensors"))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "k_proj", "v_proj", "attn_out"]
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        ref = lora(torch.tensor([IDS]), attention_mask=_causal()[None, None]).logits[0]
    _, ours = load_model(base, lora_dir=tmp_path / "adapter")
    torch.testing.assert_close(full_forward(ours, IDS, _causal()), ref, rtol=1e-4, atol=1e-4)


def test_adapter_for_another_architecture_is_refused(tmp_path):
    base = ck.write_llada(tmp_path / "llada", ck.hf_llama(seed=33))
    peft_model(ck.hf_llama(seed=33)).save_pretrained(tmp_path / "adapter")  # Llama names, LLaDA base
    with pytest.raises(CheckpointError, match="adapter targets tensors the model lacks"):
        load_model(base, lora_dir=tmp_path / "adapter")


def test_missing_adapter_file_is_named(tmp_path):
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=34))
    (tmp_path / "adapter").mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json: file not found"):
        load_model(base, lora_dir=tmp_path / "adapter")
