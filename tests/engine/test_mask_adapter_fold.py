"""The mask adapter folded into the base matmuls ([W; A], see mask_adapter.Entry) against the adapter run
on its own: clean rows keep the base model's bits, mask rows get the same deltas, decoding is unchanged."""
import random

import pytest
import torch

from d2f.bench.speed import cached_windows
from d2f.engine.models import decoder as decoder_module
from d2f.engine.models.linear import Linear, onednn_supported
from d2f.engine.params import DecodeParams
from tests.support import checkpoints as ck
from tests.support.engines import make_engine

# SmolLM2-135M's fused matmuls (out, in) and the adapter rank each one stacks at r = 32.
SMOLLM2 = {"qkv": (960, 576, 96), "o": (576, 576, 32), "gate_up": (3072, 576, 64), "down": (576, 1536, 32)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_appended_rows_leave_the_base_columns_bit_identical(dtype):
    if not onednn_supported(dtype, "cpu"):
        pytest.skip(f"no oneDNN {dtype} matmul on this CPU: nothing is folded there")
    g = torch.Generator().manual_seed(0)
    for name, (out, inp, rank) in SMOLLM2.items():
        w = (torch.randn(out, inp, generator=g) * 0.05).to(dtype)
        a = (torch.randn(rank, inp, generator=g) * 0.05).to(dtype)
        base, folded = Linear(w), Linear(torch.cat([w, a]))
        for rows in (1, 2, 3, 4, 7, 16, 33, 64):
            x = torch.randn(rows, inp, generator=g).to(dtype)
            y = folded(x)
            assert torch.equal(y[:, :out], base(x)), (name, rows)
            assert torch.allclose(y[:, out:].float(), Linear(a)(x).float(), rtol=2e-2, atol=2e-2), (name, rows)


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    _, base, d2f = ck.write_ar_preserving_pair(tmp_path_factory.mktemp("fold"))
    folded = make_engine(d2f)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoder_module, "onednn_supported", lambda *_: False)  # the decoder folds nothing
        unfolded = make_engine(d2f)
    return {"ar": make_engine(base), "folded": folded, "unfolded": unfolded}


def test_the_fold_happened_only_where_asked(engines):
    folded = [e.folded for layer in engines["folded"].model.adapter.layers for e in layer.values()]
    unfolded = [e.folded for layer in engines["unfolded"].model.adapter.layers for e in layer.values()]
    assert folded and all(folded) == onednn_supported(torch.float32, "cpu")
    assert not any(unfolded)


def test_mask_windows_match_and_clean_rows_are_the_ar_models(engines):
    logits = {}
    for name in ("folded", "unfolded", "ar"):
        eng = engines[name]
        logits[name] = {w: eng.runner.run([work])[0].clone() for w, work in cached_windows(eng, 12, [1, 2, 4])}
    for w in (1, 2, 4):
        # Row 0 predicts the window's first position from the last clean row: the AR model's own bits.
        for name in ("folded", "unfolded"):
            assert torch.equal(logits[name][w][0], logits["ar"][w][0])
        if w > 1:  # the other rows are read from mask rows
            assert torch.allclose(logits["folded"][w], logits["unfolded"][w], atol=1e-5, rtol=1e-4)
            assert not torch.allclose(logits["folded"][w][1:], logits["ar"][w][1:], atol=1e-3)  # the adapter acted
    prompt = [random.Random(1).randrange(3, ck.VOCAB - 1) for _ in range(9)]
    greedy = DecodeParams(max_tokens=16, ignore_eos=True)
    ar = engines["ar"].generate([prompt], greedy)[0].token_ids
    for name in ("folded", "unfolded"):
        assert engines[name].generate([prompt], greedy)[0].token_ids == ar
        exact = DecodeParams(max_tokens=16, ignore_eos=True, exact=True, block_size=3)
        assert engines[name].generate([prompt], exact)[0].token_ids == ar


def test_parallel_decoding_is_unchanged_by_the_fold(engines):
    params = DecodeParams(max_tokens=14, block_size=4, tau_add=0.1, tau_act=0.5, tau_conf=0.2, ignore_eos=True)
    for seed in range(3):
        prompt = [random.Random(seed).randrange(3, ck.VOCAB - 1) for _ in range(5 + seed)]
        a = engines["folded"].generate([prompt], params)[0]
        b = engines["unfolded"].generate([prompt], params)[0]
        assert a.token_ids == b.token_ids and a.num_forwards == b.num_forwards
