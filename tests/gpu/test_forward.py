"""On the tier's device: our decoder against transformers' Llama and Qwen2 on the same weights (fp32 to 1e-4;
bf16 no further from transformers' fp32 logits than transformers' own bf16 forward, within 2x), and a LoRA
merged at load against the unmerged PEFT model."""
import pytest
import torch

from d2f.engine.models.loader import load_model
from tests.support import checkpoints as ck
from tests.support.forward import IDS, block_mask, causal_mask, full_forward
from tests.support.lora import peft_model

pytestmark = pytest.mark.gpu

# family -> (transformers model, its checkpoint on disk in that family's format)
FAMILIES = {
    "llama": (lambda: ck.hf_llama(seed=21), lambda d, hf: ck.write_llama(d, hf)),
    "llada": (lambda: ck.hf_llama(seed=21), lambda d, hf: ck.write_llada(d, hf, block=4)),
    "qwen2": (lambda: ck.hf_qwen2(seed=22), lambda d, hf: ck.write_qwen2(d, hf)),
    "dream": (lambda: ck.hf_qwen2(seed=22, tie=True), lambda d, hf: ck.write_dream(d, hf)),
}


def _hf_logits(hf, mask: torch.Tensor, device: str) -> torch.Tensor:
    with torch.no_grad():
        out = hf.to(device)(torch.tensor([IDS], device=device), attention_mask=mask.to(device)[None, None])
    return out.logits[0].float()


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mask_kind", ["causal", "block"])
def test_fp32_matches_transformers(tmp_path, device, family, mask_kind):
    make_hf, write = FAMILIES[family]
    path = write(tmp_path / family, make_hf())
    mask = causal_mask(len(IDS)) if mask_kind == "causal" else block_mask(len(IDS), 5, 4)
    _, ours = load_model(path, torch.float32, device)
    torch.testing.assert_close(full_forward(ours, IDS, mask), _hf_logits(make_hf(), mask, device),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_bf16_is_as_close_to_fp32_as_transformers_bf16(tmp_path, device, family):
    make_hf, write = FAMILIES[family]
    path = write(tmp_path / family, make_hf())
    mask = causal_mask(len(IDS))
    ref = _hf_logits(make_hf(), mask, device)
    theirs = _hf_logits(make_hf().to(torch.bfloat16), mask, device)
    _, ours_model = load_model(path, torch.bfloat16, device)
    ours = full_forward(ours_model, IDS, mask)
    ours_err, their_err = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
    assert ours_err <= 2 * their_err, (ours_err, their_err)
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


@pytest.mark.parametrize("rslora", [False, True])
def test_merged_lora_equals_unmerged_peft(tmp_path, device, rslora):
    base = ck.write_llama(tmp_path / "base", ck.hf_llama(seed=31))
    lora = peft_model(ck.hf_llama(seed=31), rslora)
    lora.save_pretrained(tmp_path / "adapter")
    mask = causal_mask(len(IDS))
    _, ours = load_model(base, torch.float32, device, lora_dir=tmp_path / "adapter")
    torch.testing.assert_close(full_forward(ours, IDS, mask), _hf_logits(lora, mask, device), rtol=1e-4, atol=1e-4)
