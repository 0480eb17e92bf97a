"""A PEFT LoRA over a tiny model whose adapter really changes it: the merged-LoRA tests' reference."""
import torch
from peft import LoraConfig, get_peft_model


def peft_model(hf, rslora: bool = False):
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], lora_dropout=0.0,
                     use_rslora=rslora)
    model = get_peft_model(hf, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # PEFT initialises B to zero; make the adapter do something
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()
