"""Continuous batching: a request's tokens never depend on what else shares its forwards."""
import random

import pytest

from d2f.engine.params import DecodeParams
from tests.support.batching import random_requests, run_alone, run_staggered
from tests.support.engines import make_engine
from tests.support.exactness import assert_batched_equals_alone


@pytest.mark.parametrize("family", ["llada", "dream", "llama_d2f"])
def test_batched_equals_alone(ckpt_dirs, family):
    assert_batched_equals_alone(ckpt_dirs[family], family, seed=len(family), n=10, abort=(1, 4))


def test_ar_batch_of_mixed_lengths_equals_alone(ckpt_dirs):
    reqs = random_requests(seed=5, n=12, blocks=(1,))
    alone = run_alone(ckpt_dirs["qwen2"], reqs)
    eng = make_engine(ckpt_dirs["qwen2"])
    done = run_staggered(eng, reqs, join_every=1)
    assert {rid: o.token_ids for rid, o in done.items()} == alone


def test_preemption_under_a_tiny_pool_keeps_answers(ckpt_dirs):
    reqs = random_requests(seed=7, n=8, blocks=(1, 4))
    for _, _, p in reqs:
        p.max_tokens = 16
    alone = run_alone(ckpt_dirs["dream"], reqs)
    # 512 bytes of K/V per token here; 12 pages of 4 tokens hold ~2 requests at once.
    eng = make_engine(ckpt_dirs["dream"], kv_cache_memory=12 * 4 * 512, page_size=4)
    done = run_staggered(eng, reqs, join_every=1)
    assert eng.scheduler.num_preemptions > 0
    assert {rid: o.token_ids for rid, o in done.items()} == alone
    assert eng.pool.num_free == eng.pool.num_pages


def test_chunked_prefill_of_causal_prompt_is_exact(ckpt_dirs):
    reqs = random_requests(seed=9, n=6, blocks=(1,))
    for i, (_, prompt, _) in enumerate(reqs):
        prompt.extend(range(3, 3 + 20 + i))  # long prompts
    alone = run_alone(ckpt_dirs["llama"], reqs)
    eng = make_engine(ckpt_dirs["llama"], max_num_batched_tokens=7)
    done = run_staggered(eng, reqs, join_every=1)
    assert {rid: o.token_ids for rid, o in done.items()} == alone


def test_limits_hold_every_step(ckpt_dirs):
    eng = make_engine(ckpt_dirs["llada"], max_num_seqs=3, max_num_batched_tokens=40)
    for rid, prompt, params in random_requests(seed=11, n=9):
        eng.add_request(rid, prompt, params)
    while eng.has_unfinished():
        eng.step()
        assert eng.stats.running <= 3
        assert eng.stats.num_seqs_in_forward <= 3
        # one window may exceed the budget only when it runs alone
        assert eng.stats.tokens_in_forward <= 40 or eng.stats.num_seqs_in_forward == 1


def test_fifo_admission(ckpt_dirs):
    eng = make_engine(ckpt_dirs["llama"], max_num_seqs=2)
    for i in range(5):
        eng.add_request(f"q{i}", [5, 6, 7], DecodeParams(max_tokens=3 + i, ignore_eos=True))
    admitted = []
    while eng.has_unfinished():
        eng.step()
        for seq in eng.scheduler.running:
            if seq.request_id not in admitted:
                admitted.append(seq.request_id)
    assert admitted == [f"q{i}" for i in range(5)]


def test_no_page_leaks_after_many_random_requests_with_aborts(ckpt_dirs):
    eng = make_engine(ckpt_dirs["dream"], kv_cache_memory=40 * 4 * 512, page_size=4, max_num_seqs=8)
    rng = random.Random(13)
    reqs = random_requests(seed=13, n=200, blocks=(1, 4, 8))
    finished = 0
    for i, (rid, prompt, params) in enumerate(reqs):
        eng.add_request(rid, prompt, params)
        if i % 3 == 0:
            for out in eng.step():
                finished += out.finished
        if rng.random() < 0.2 and eng.requests:
            eng.abort(rng.choice(sorted(eng.requests)))
            finished += 1
    while eng.has_unfinished():
        finished += sum(o.finished for o in eng.step())
    assert finished == 200
    assert eng.pool.num_free == eng.pool.num_pages
    assert not eng.requests


def test_prompt_that_can_never_fit_is_refused(ckpt_dirs):
    eng = make_engine(ckpt_dirs["llada"], kv_cache_memory=4 * 4 * 512, page_size=4)  # 16 slots
    with pytest.raises(ValueError, match="KV pool holds 16"):
        eng.add_request("big", list(range(3, 20)), DecodeParams(max_tokens=4))
    with pytest.raises(ValueError, match="model's context is 512"):
        make_engine(ckpt_dirs["llada"]).add_request("long", [5] * 500, DecodeParams(max_tokens=40))
    assert not eng.has_unfinished()


def test_fault_in_one_sequence_fails_only_that_request(ckpt_dirs, monkeypatch):
    reqs = random_requests(seed=17, n=4, blocks=(4,))
    alone = run_alone(ckpt_dirs["dream"], reqs)
    eng = make_engine(ckpt_dirs["dream"])
    real = eng.algorithm.commit
    victim = reqs[2][0]

    def flaky(seq, *a):
        if seq.request_id == victim:
            raise IndexError("injected")
        return real(seq, *a)

    monkeypatch.setattr(eng.algorithm, "commit", flaky)
    done = run_staggered(eng, reqs, join_every=1)
    assert done[victim].finish_reason == "error" and "internal error" in done[victim].error
    assert all(done[rid].token_ids == alone[rid] for rid, _, _ in reqs if rid != victim)
    assert eng.pool.num_free == eng.pool.num_pages


def test_failing_forward_is_isolated_to_its_sequence(ckpt_dirs, monkeypatch):
    reqs = random_requests(seed=19, n=3, blocks=(4,))
    for _, _, p in reqs:
        p.max_tokens, p.ignore_eos = 12, True  # several forwards each, so they overlap
    alone = run_alone(ckpt_dirs["llada"], reqs)
    eng = make_engine(ckpt_dirs["llada"])
    victim = reqs[1][0]
    real = eng.runner.run

    def run(works):
        if any(w.seq.request_id == victim for w in works) and eng.requests[victim].num_forwards == 1:
            raise RuntimeError("injected NaN storm")
        return real(works)

    monkeypatch.setattr(eng.runner, "run", run)
    done = run_staggered(eng, reqs, join_every=1)
    assert done[victim].finish_reason == "error"
    assert all(done[rid].token_ids == alone[rid] for rid, _, _ in reqs if rid != victim)
    assert all(done[rid].finish_reason == "length" for rid, _, _ in reqs if rid != victim)
