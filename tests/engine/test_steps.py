"""Step records (what the playground draws): one per forward of a request that asks, telling exactly which
tokens that forward committed, and nothing recorded or changed for a request that does not ask."""
import dataclasses

import pytest

from d2f.engine.params import DecodeParams
from tests.support.batching import random_requests
from tests.support.engines import make_engine


def _run(eng, reqs) -> dict:
    """Every output per request, the requests joining one step apart."""
    pending, outs = list(reqs), {rid: [] for rid, _, _ in reqs}
    while pending or eng.has_unfinished():
        if pending:
            eng.add_request(*pending.pop(0))
        for out in eng.step():
            outs[out.request_id].append(out)
    return outs


def _replay(outs) -> dict[int, int]:
    """Rebuild the answer from the records alone, checking each against what came before it."""
    slots: dict[int, int] = {}
    records = [r for out in outs for r in out.steps]
    assert [r.forward for r in records] == list(range(1, outs[-1].num_forwards + 1))
    for r in records:
        assert not (r.proposed or r.accepted or r.rejected)  # these algorithms never draft
        assert len(r.masked) == len(r.blocks)
        for pos, tok in r.committed:
            assert pos not in slots and any(s <= pos < e for s, e in r.blocks)
            slots[pos] = tok
        for (s, e), masked in zip(r.blocks, r.masked):
            assert [p for p in range(s, e) if p not in slots] == masked
    return slots


@pytest.mark.parametrize("family", ["llada", "dream", "llama_d2f", "qwen2"])
def test_records_rebuild_the_answer_and_change_nothing(ckpt_dirs, family):
    blocks = {"llada": (4, 8), "dream": (1, 4), "llama_d2f": (2, 4), "qwen2": (1,)}[family]
    plain = random_requests(seed=7, n=8, blocks=blocks)
    for _, _, p in plain:
        p.max_tokens = 16
    asked = [(rid, prompt, dataclasses.replace(p, record_steps=True)) for rid, prompt, p in plain]
    causal = family in ("llama_d2f", "qwen2")
    # A small pool so some requests are preempted and recomputed, and for causal prompts a small budget so
    # they are prefilled in chunks (forwards that predict nothing).
    kw = dict(kv_cache_memory=12 * 4 * 512, page_size=4, max_num_batched_tokens=8 if causal else 24)
    without = _run(make_engine(ckpt_dirs[family], **kw), plain)
    eng = make_engine(ckpt_dirs[family], **kw)
    got = _run(eng, asked)
    assert eng.scheduler.num_preemptions > 0
    for rid, _, _ in plain:
        final, base = got[rid][-1], without[rid][-1]
        assert (final.token_ids, final.num_forwards, final.finish_reason) == (
            base.token_ids, base.num_forwards, base.finish_reason)
        assert all(o.steps is None for o in without[rid])
        assert [t for o in got[rid] for t in o.new_token_ids] == final.token_ids
        slots = _replay(got[rid])
        assert [slots[i] for i in range(len(final.token_ids))] == final.token_ids
    chunks = [r for outs in got.values() for o in outs for r in o.steps if not r.blocks]
    assert bool(chunks) == causal and all(not r.committed for r in chunks)


def test_a_forward_that_finishes_no_block_still_reports(ckpt_dirs):
    eng = make_engine(ckpt_dirs["llada"])
    params = DecodeParams(max_tokens=8, block_size=8, tau_conf=1.0, ignore_eos=True, record_steps=True)
    eng.add_request("r", [5, 6, 7], params)
    outs = []
    while eng.has_unfinished():
        outs.extend(eng.step())
    # tau_conf 1: one commit per forward, so seven outputs carry a record and no tokens, the eighth all 8.
    assert [len(o.new_token_ids) for o in outs] == [0] * 7 + [8]
    assert [[len(r.committed) for r in o.steps] for o in outs] == [[1]] * 8
    assert outs[0].steps[0].blocks == [(0, 8)] and len(outs[0].steps[0].masked[0]) == 7
    assert outs[-1].steps[0].masked == [[]]
