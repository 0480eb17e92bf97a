"""Cached, packed, paged decoding gives exactly the tokens of the plain recompute-from-scratch decoder."""

import pytest
import torch

from d2f.engine.params import DecodeParams
from tests.support.checkpoints import random_prompt
from tests.support.exactness import assert_cached_equals_recompute

KNOBS = [  # (block, tau_add, tau_act, tau_conf): the spec's defaults and looser points
    (4, 0.1, 0.95, 0.9), (4, 0.1, 0.9, 0.3), (8, 0.25, 0.5, 0.2), (4, 0.0, 0.7, 0.05), (8, 0.5, 0.95, 0.6),
]



@pytest.mark.parametrize("family", ["llada", "dream", "llama_d2f"])
@pytest.mark.parametrize("knobs", KNOBS)
def test_cached_equals_recompute(engines, family, knobs):
    block, tau_add, tau_act, tau_conf = knobs
    if family == "llama_d2f":
        block //= 2
    for seed in range(2):
        assert_cached_equals_recompute(engines[family], random_prompt(seed * 7 + block, 5 + 3 * seed), block=block,
                                       tau_add=tau_add, tau_act=tau_act, tau_conf=tau_conf)


def test_parallel_commits_happen(engines):
    """The loose thresholds must really commit several tokens per forward, or the tests above prove little."""
    eng = engines["llada"]
    out = eng.generate([random_prompt(3, 6)], DecodeParams(max_tokens=16, block_size=4, tau_conf=0.05, tau_act=0.5,
                                                      ignore_eos=True))[0]
    assert len(out.token_ids) == 16
    assert out.num_forwards < 16


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_block_size_one_is_greedy_ar(engines, family):
    """Block size 1 on a shifted-logit model is exactly transformers' greedy generate."""
    from tests.support import checkpoints as ck

    hf = ck.hf_llama(seed=3, tie=True) if family == "llama" else ck.hf_qwen2(seed=4)
    eng = engines[family]
    for seed in range(3):
        prompt = random_prompt(100 + seed, 4 + seed * 5)
        out = eng.generate([prompt], DecodeParams(max_tokens=24, ignore_eos=True))[0]
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == ref
        assert out.num_forwards == 24


def test_eos_ends_generation_and_is_excluded(engines):
    eng = engines["llama"]
    prompt = random_prompt(7, 6)
    free = eng.generate([prompt], DecodeParams(max_tokens=12, ignore_eos=True))[0].token_ids
    stop_tok = free[5]
    first = free.index(stop_tok)
    out = eng.generate([prompt], DecodeParams(max_tokens=12, stop_token_ids=[stop_tok]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == free[:first]
    assert out.num_forwards == first + 1


@pytest.mark.parametrize("max_tokens", [1, 5, 7, 9])
def test_max_tokens_exact_with_partial_last_block(engines, max_tokens):
    eng = engines["dream"]
    out = eng.generate([random_prompt(9, 5)], DecodeParams(max_tokens=max_tokens, block_size=4, ignore_eos=True,
                                                     tau_conf=0.5))[0]
    assert len(out.token_ids) == max_tokens
    assert out.finish_reason == "length"


def test_seeded_sampling_reproducible(engines):
    eng = engines["dream"]
    prompt = random_prompt(11, 6)
    p = lambda seed: DecodeParams(max_tokens=12, block_size=4, temperature=1.0, top_p=0.9, top_k=20, seed=seed,  # noqa: E731
                                  ignore_eos=True, tau_conf=0.3)
    a = eng.generate([prompt], p(123))[0].token_ids
    b = eng.generate([prompt], p(123))[0].token_ids
    c = eng.generate([prompt], p(124))[0].token_ids
    assert a == b
    assert a != c


def test_top_k_one_sampling_equals_greedy(engines):
    eng = engines["llama"]
    prompt = random_prompt(12, 6)
    greedy = eng.generate([prompt], DecodeParams(max_tokens=10, ignore_eos=True))[0].token_ids
    sampled = eng.generate([prompt], DecodeParams(max_tokens=10, ignore_eos=True, temperature=1.5, top_k=1,
                                                  seed=5))[0].token_ids
    assert sampled == greedy


@pytest.mark.parametrize("bad", [dict(block_size=3), dict(max_tokens=0), dict(temperature=-1.0),
                                 dict(top_p=0.0), dict(tau_conf=1.5), dict(tau_add=float("nan"))])
def test_bad_knobs_raise_value_error(engines, bad):
    with pytest.raises(ValueError):
        engines["llada"].add_request("bad", [5, 6], DecodeParams(**bad))


def test_ar_model_rejects_block_size(engines):
    with pytest.raises(ValueError, match="block_size must be 1"):
        engines["llama"].add_request("bad", [5, 6], DecodeParams(block_size=4))


def test_tiny_top_p_keeps_the_best_token(engines):
    """Found by fuzzing: top_p = 5e-324 rounds to 0 in fp32 and once filtered out every token."""
    eng = engines["llama"]
    prompt = random_prompt(13, 5)
    greedy = eng.generate([prompt], DecodeParams(max_tokens=6, ignore_eos=True))[0].token_ids
    out = eng.generate([prompt], DecodeParams(max_tokens=6, ignore_eos=True, temperature=1.0, top_p=5e-324,
                                              seed=0))[0]
    assert out.finish_reason == "length" and out.token_ids == greedy


def test_denormal_temperature_decodes_greedily(engines):
    """Found by fuzzing: temperature 1e-308 overflowed the scaled logits into NaN probabilities."""
    eng = engines["llama"]
    prompt = random_prompt(14, 5)
    greedy = eng.generate([prompt], DecodeParams(max_tokens=6, ignore_eos=True))[0].token_ids
    out = eng.generate([prompt], DecodeParams(max_tokens=6, ignore_eos=True, temperature=1.1125369292536007e-308,
                                              seed=0))[0]
    assert out.finish_reason == "length" and out.token_ids == greedy
