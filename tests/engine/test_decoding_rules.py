"""The decoding rules have one owner, chosen from the model's spec; the scheduler only plans."""
import dataclasses

import pytest

from d2f.engine.decoding import ARPreserving, D2F, for_spec
from d2f.engine.models.checkpoint import read_spec
from d2f.engine.params import DecodeParams
from tests.support import checkpoints as ck
from tests.support.engines import make_engine

from tests.support.batching import random_requests, run_staggered


@pytest.mark.parametrize("family", ["llada", "dream", "llama_d2f", "llama", "qwen2"])
def test_d2f_and_pure_ar_models_decode_by_d2f_rules(engines, family):
    eng = engines[family]
    assert type(for_spec(eng.spec)) is D2F
    assert type(eng.algorithm) is D2F
    eng.add_request("rules", [5, 6], DecodeParams(max_tokens=2))
    assert eng.requests["rules"].algorithm is eng.algorithm  # the runner and scheduler ask the sequence's
    eng.abort("rules")


def test_ar_preserving_models_decode_by_their_own_rules(tmp_path):
    path = ck.write_llama(tmp_path / "arp", ck.hf_llama(seed=11), mask_id=ck.MASK_ID,
                          d2f={"ar_preserving": True, "block_size": 4})
    spec, _ = read_spec(path)
    assert type(for_spec(spec)) is ARPreserving
    assert type(for_spec(dataclasses.replace(spec, ar_preserving=False))) is D2F


def _state(seqs) -> list:
    return [(s.request_id, [dataclasses.astuple(b) for b in s.blocks], list(s.tokens), list(s.is_masked),
             s.num_done, s.eos_seen) for s in seqs]


@pytest.mark.parametrize("family,pool", [("dream", None), ("llada", 12 * 4 * 512), ("llama", None)])
def test_schedule_only_plans(ckpt_dirs, family, pool):
    """schedule() leaves every sequence's blocks and tokens as they were; what it planned (window,
    predicted positions) is exactly what the sequence holds once the algorithm has begun the Work."""
    blocks = {"dream": (1, 4, 8), "llada": (4, 8), "llama": (1,)}[family]
    reqs = random_requests(seed=23, n=8, blocks=blocks)
    kw = {} if pool is None else {"kv_cache_memory": pool, "page_size": 4}
    alone = {rid: make_engine(ckpt_dirs[family]).generate([p], params)[0].token_ids for rid, p, params in reqs}
    eng = make_engine(ckpt_dirs[family], **kw)
    real_schedule, real_run = eng.scheduler.schedule, eng.runner.run
    planned = []

    def schedule():
        seqs = list(eng.requests.values())
        before = _state(seqs)
        works = real_schedule()
        assert _state(seqs) == before
        planned.append(len(works))
        return works

    def run(works):
        for w in works:
            if w.seq.blocks:
                assert w.predict == eng.algorithm.masked_positions(w.seq)
        return real_run(works)

    eng.scheduler.schedule, eng.runner.run = schedule, run
    done = run_staggered(eng, reqs, join_every=1)
    assert sum(planned) > len(reqs)
    assert {rid: o.token_ids for rid, o in done.items()} == alone
    if pool is not None:
        assert eng.scheduler.num_preemptions > 0


def test_ar_preserving_commits_the_leftmost_mask_without_fallback():
    from d2f.engine.sequence import Block
    rules, d2f = ARPreserving(), D2F()
    blk = Block(start=10, size=4, masked=4, fully_activated=True)
    confs = [0.2, 0.95, 0.1, 0.3]
    assert rules.select(blk, [0, 1, 2, 3], confs, 0.9) == [0, 1]  # leftmost forced, then the confident one
    assert rules.select(blk, [4, 5], confs + [0.1, 0.2], 0.9) == []  # not the leftmost block: no fallback
    assert d2f.select(blk, [0, 2, 3], confs, 0.9) == [3]  # D2F: the most confident when nothing passes
    assert d2f.select(dataclasses.replace(blk, fully_activated=False), [0, 2, 3], confs, 0.9) == []


def test_every_refusal_is_a_request_error(engines):
    from d2f.engine.errors import RequestError
    eng = engines["llada"]
    for prompt, params in (([5], DecodeParams(max_tokens=0)), ([5], DecodeParams(block_size=3)), ([], DecodeParams()),
                           ([10 ** 6], DecodeParams()), ([5] * 600, DecodeParams())):
        with pytest.raises(RequestError):
            eng.validate(prompt, params)
    eng.add_request("dup", [5, 6], DecodeParams(max_tokens=2))
    with pytest.raises(RequestError, match="already running"):
        eng.add_request("dup", [5, 6], DecodeParams(max_tokens=2))
    eng.abort("dup")
