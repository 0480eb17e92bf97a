"""Our decoder's forward equals transformers' Llama/Qwen2 forward on the same weights."""
import pytest
import torch

from d2f.engine.models.loader import load_model
from tests.support import checkpoints as ck
from tests.support.forward import IDS, block_mask, full_forward


@pytest.mark.parametrize("mask_kind", ["full", "block", "causal"])
def test_llada_matches_llama_model(tmp_path, mask_kind):
    """A LLaDA-format checkpoint, read through our loader, equals the same weights as HF Llama."""
    hf = ck.hf_llama(seed=21)
    _, ours = load_model(ck.write_llada(tmp_path / "llada", hf, block=4))
    n = len(IDS)
    mask = {"full": torch.ones(n, n, dtype=torch.bool), "block": block_mask(n, 5, 4),
            "causal": torch.tril(torch.ones(n, n, dtype=torch.bool))}[mask_kind]
    with torch.no_grad():
        ref = hf(torch.tensor([IDS]), attention_mask=mask[None, None]).logits[0]
    torch.testing.assert_close(full_forward(ours, IDS, mask), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tie", [False, True])
def test_dream_and_qwen2_match_qwen2_model(tmp_path, tie):
    hf = ck.hf_qwen2(seed=22, tie=tie)
    n = len(IDS)
    mask = block_mask(n, 6, 4)
    with torch.no_grad():
        ref = hf(torch.tensor([IDS]), attention_mask=mask[None, None]).logits[0]
    for path in (ck.write_dream(tmp_path / "dream", hf), ck.write_qwen2(tmp_path / "qwen2", hf, shards=3)):
        spec, ours = load_model(path)
        assert spec.qkv_bias
        torch.testing.assert_close(full_forward(ours, IDS, mask), ref, rtol=1e-4, atol=1e-4)


def test_tied_llama_causal_matches(tmp_path):
    hf = ck.hf_llama(seed=23, tie=True)
    spec, ours = load_model(ck.write_llama(tmp_path / "llama", hf, shards=2))
    assert spec.tie_embeddings and spec.prompt_causal and spec.shift_logits
    n = len(IDS)
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    with torch.no_grad():
        ref = hf(torch.tensor([IDS])).logits[0]
    torch.testing.assert_close(full_forward(ours, IDS, mask), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(tmp_path, dtype):
    hf = ck.hf_llama(seed=24)
    path = ck.write_llama(tmp_path / "llama", hf)
    _, full = load_model(path, torch.float32)
    _, half = load_model(path, dtype)
    assert half.dtype == dtype
    mask = torch.tril(torch.ones(len(IDS), len(IDS), dtype=torch.bool))
    a, b = full_forward(full, IDS, mask), full_forward(half, IDS, mask)
    assert b.dtype == torch.float32  # logits come out in fp32 whatever the weights
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8
    assert (a - b).abs().max() < 0.25 * a.abs().max()
