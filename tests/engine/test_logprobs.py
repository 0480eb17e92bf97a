"""Log-probabilities equal a direct computation: transformers on the same weights for AR models (answer and
prompt, chunked prefill included), our own recompute-from-scratch decoder for D2F commits."""

import pytest
import torch

from d2f.engine.errors import RequestError
from d2f.engine.params import DecodeParams
from tests.support import checkpoints as ck
from tests.support.engines import make_engine
from tests.support.reference_d2f import reference_decode

ATOL = 1e-4  # fp32: cached, packed forwards against one dense forward



def _hf_logprobs(hf, ids: list[int], temperature: float = 1.0) -> torch.Tensor:
    """Row i: log-probabilities of token i + 1 given ids[:i + 1], from transformers."""
    with torch.no_grad():
        return (hf(torch.tensor([ids])).logits[0].float() / temperature).log_softmax(-1)


def _close(entries, ref_rows: torch.Tensor, tokens: list[int], k: int) -> None:
    assert [e.token for e in entries] == tokens
    got = torch.tensor([e.logprob for e in entries])
    torch.testing.assert_close(got, ref_rows.gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1), rtol=0, atol=ATOL)
    for e, row in zip(entries, ref_rows):
        assert len(e.top) == k
        values, ids = row.topk(k)
        assert [t for t, _ in e.top] == ids.tolist()
        torch.testing.assert_close(torch.tensor([v for _, v in e.top]), values, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_ar_logprobs_equal_transformers(ckpt_dirs, family, monkeypatch):
    """Answer and prompt log-probabilities, with the prompt scored in chunks of 4 while other requests share
    the forwards; the tokens are the ones decoded without logprobs."""
    import d2f.engine.scheduler as scheduler

    monkeypatch.setattr(scheduler, "SCORE_CHUNK", 4)
    hf = ck.hf_llama(seed=3, tie=True) if family == "llama" else ck.hf_qwen2(seed=4)
    eng = make_engine(ckpt_dirs[family], max_num_batched_tokens=16)
    prompts = [ck.random_prompt(40 + i, 5 + 4 * i) for i in range(3)]
    plain = eng.generate(prompts, DecodeParams(max_tokens=8, ignore_eos=True))
    outs = eng.generate(prompts, [DecodeParams(max_tokens=8, ignore_eos=True, logprobs=3, prompt_logprobs=2),
                                  DecodeParams(max_tokens=8, ignore_eos=True),
                                  DecodeParams(max_tokens=8, ignore_eos=True, logprobs=0)])
    assert [o.token_ids for o in outs] == [o.token_ids for o in plain]
    assert outs[1].logprobs is None and outs[1].prompt_logprobs is None and outs[2].prompt_logprobs is None
    for i in (0, 2):
        p, out = prompts[i], outs[i]
        ref = _hf_logprobs(hf, p + out.token_ids)
        _close(out.logprobs, ref[len(p) - 1:-1], out.token_ids, 3 if i == 0 else 0)
    _close(outs[0].prompt_logprobs, _hf_logprobs(hf, prompts[0])[:-1], prompts[0][1:], 2)


def test_sampled_logprobs_are_after_temperature(ckpt_dirs):
    hf = ck.hf_llama(seed=3, tie=True)
    eng = make_engine(ckpt_dirs["llama"])
    prompt = ck.random_prompt(50, 6)
    out = eng.generate([prompt], DecodeParams(max_tokens=6, ignore_eos=True, temperature=0.7, top_k=5, seed=1,
                                              logprobs=1, prompt_logprobs=1))[0]
    ref = _hf_logprobs(hf, prompt + out.token_ids, temperature=0.7)  # before top-k: the full distribution
    _close(out.logprobs, ref[len(prompt) - 1:-1], out.token_ids, 1)
    _close(out.prompt_logprobs, ref[:len(prompt) - 1], prompt[1:], 1)


def test_max_tokens_zero_scores_the_prompt_alone(ckpt_dirs):
    hf = ck.hf_llama(seed=3, tie=True)
    eng = make_engine(ckpt_dirs["llama"])
    prompt = ck.random_prompt(60, 9)
    out = eng.generate([prompt], DecodeParams(max_tokens=0, prompt_logprobs=0))[0]
    assert out.token_ids == [] and out.finish_reason == "length" and out.num_forwards == 1
    _close(out.prompt_logprobs, _hf_logprobs(hf, prompt)[:-1], prompt[1:], 0)
    assert eng.pool.num_free == eng.pool.num_pages
    with pytest.raises(RequestError, match="max_tokens"):
        eng.add_request("x", prompt, DecodeParams(max_tokens=0))  # nothing to do without scoring


def test_stop_token_logprob_comes_last(ckpt_dirs):
    eng = make_engine(ckpt_dirs["llama"])
    prompt = ck.random_prompt(7, 6)
    free = eng.generate([prompt], DecodeParams(max_tokens=12, ignore_eos=True, logprobs=0))[0]
    stop = free.token_ids[5]
    out = eng.generate([prompt], DecodeParams(max_tokens=12, stop_token_ids=[stop], logprobs=0))[0]
    cut = free.token_ids.index(stop)
    assert out.finish_reason == "stop" and out.token_ids == free.token_ids[:cut]
    assert out.logprobs == free.logprobs[:cut + 1] and out.logprobs[-1].token == stop


@pytest.mark.parametrize("family,block,tau_conf", [("llada", 4, 0.3), ("dream", 4, 0.5), ("llama_d2f", 2, 0.2)])
def test_d2f_logprobs_are_the_committing_forwards(engines, family, block, tau_conf):
    """A D2F commit's log-probability is the one the token had in the forward that committed it."""
    eng = engines[family]
    prompt = ck.random_prompt(70, 6)
    params = dict(block_size=block, tau_add=0.1, tau_act=0.5, tau_conf=tau_conf)
    out = eng.generate([prompt], DecodeParams(max_tokens=3 * block + 1, ignore_eos=True, logprobs=2, **params))[0]
    record: dict = {}
    ref, _ = reference_decode(eng.model, prompt, max_tokens=3 * block + 1, mask_id=ck.MASK_ID, stop_ids=set(),
                              record=record, block=block, tau_add=0.1, tau_act=0.5, tau_conf=tau_conf)
    assert out.token_ids == ref and out.num_forwards < len(ref)  # several tokens per forward
    want = [record[len(prompt) + i] for i in range(len(ref))]
    torch.testing.assert_close(torch.tensor([e.logprob for e in out.logprobs]), torch.tensor(want), rtol=0, atol=ATOL)
    assert all(e.top[0][1] >= e.logprob - 1e-6 for e in out.logprobs)


@pytest.fixture(scope="module")
def ar_preserving(tmp_path_factory):
    root = tmp_path_factory.mktemp("arp-lp")
    hf = ck.hf_llama(seed=11)
    d2f = ck.write_llama(root / "d2f", hf, mask_id=ck.MASK_ID, d2f={"ar_preserving": True, "block_size": 4})
    ck.write_mask_adapter(d2f, seed=2)
    return hf, make_engine(d2f)


def test_ar_preserving_leftmost_commits_are_the_ar_models(ar_preserving):
    """With nothing confident every commit is the leftmost mask's, read from a clean row: the AR model's own
    log-probabilities, as transformers computes them; the prompt scores the same way."""
    hf, eng = ar_preserving
    prompt = ck.random_prompt(80, 7)
    out = eng.generate([prompt], DecodeParams(max_tokens=10, block_size=4, tau_conf=1.0, ignore_eos=True,
                                              logprobs=2, prompt_logprobs=2))[0]
    ref = _hf_logprobs(hf, prompt + out.token_ids)
    _close(out.logprobs, ref[len(prompt) - 1:-1], out.token_ids, 2)
    _close(out.prompt_logprobs, ref[:len(prompt) - 1], prompt[1:], 2)


def test_ar_preserving_parallel_commits_match_recompute(ar_preserving):
    _, eng = ar_preserving
    prompt = ck.random_prompt(81, 5)
    out = eng.generate([prompt], DecodeParams(max_tokens=12, block_size=4, tau_add=0.1, tau_act=0.5, tau_conf=0.2,
                                              ignore_eos=True, logprobs=0))[0]
    record: dict = {}
    ref, _ = reference_decode(eng.model, prompt, block=4, tau_add=0.1, tau_act=0.5, tau_conf=0.2, max_tokens=12,
                              mask_id=ck.MASK_ID, stop_ids=set(), record=record)
    assert out.token_ids == ref and out.num_forwards < len(ref)
    torch.testing.assert_close(torch.tensor([e.logprob for e in out.logprobs]),
                               torch.tensor([record[len(prompt) + i] for i in range(12)]), rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bidirectional_prompt_cannot_be_scored(engines, family):
    with pytest.raises(RequestError, match="bidirectional"):
        engines[family].validate([5, 6, 7], DecodeParams(max_tokens=4, block_size=4, prompt_logprobs=0))
    engines[family].validate([5, 6, 7], DecodeParams(max_tokens=4, block_size=4, logprobs=0))  # answers are fine


@pytest.mark.parametrize("bad", [dict(logprobs=-1), dict(logprobs=21), dict(prompt_logprobs=True),
                                 dict(logprobs=1.5)])
def test_bad_logprob_counts_raise(engines, bad):
    with pytest.raises(RequestError):
        engines["llama"].validate([5, 6], DecodeParams(max_tokens=2, **bad))
