"""Exact mode's runner-up candidates (draft_width > 1, greedy): the drafter's next tokens for the first
draft ride in the same forward as clean rows, so when one of them is the AR token its row drafts the next.

The output stays the AR model's greedy output for every width and block size, alone, batched and preempted;
the cache is bit for bit AR decoding's; sampling ignores the width.
"""

import pytest
import torch

from d2f.engine.errors import RequestError
from d2f.engine.models.families import CheckpointError, _apply_d2f_section
from d2f.engine.models.spec import ModelSpec
from d2f.engine.params import DecodeParams
from tests.support import checkpoints as ck
from tests.support.batching import run_staggered
from tests.support.engines import make_engine


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    hf, base, arp = ck.write_ar_preserving_pair(root, scale=0.1)
    return {"base": base, "arp": arp}


@pytest.fixture(scope="module")
def eng(dirs):
    return make_engine(dirs["arp"])



def _exact(block: int, width: int, **kw) -> DecodeParams:
    kw.setdefault("ignore_eos", True)
    return DecodeParams(block_size=block, exact=True, draft_width=width, **kw)


def _ar(max_tokens: int) -> DecodeParams:
    return DecodeParams(max_tokens=max_tokens, block_size=1, ignore_eos=True)


def _runner_up_oracle(answers: dict, wrong_first):
    """A drafter whose drafts are the AR answer, except that at the answer indices `wrong_first` names the
    first draft is wrong and the AR token is its runner-up."""
    def propose(seq, rows):
        ref, n = answers[tuple(seq.prompt_ids)], seq.end - seq.prompt_len
        drafts = [ref[i] for i in range(n, n + rows.shape[0])]
        if not drafts or seq.knobs.temperature:
            return drafts, None, []
        width, right = seq.knobs.draft_width, drafts[0]
        others = [(right + d) % ck.VOCAB for d in (1, 2, 3)]
        if not wrong_first(n):
            return drafts, None, others[:width - 1]
        drafts[0] = others[0]
        return drafts, None, (others[1:width - 1] + [right]) if width > 1 else []
    return propose


def _snapshot_kv(eng, monkeypatch) -> dict:
    """Each finished request's committed tokens and the cached K/V of its positions [0, cached_len),
    taken just before its pages go back."""
    got = {}
    real = eng.scheduler.remove

    def remove(seq):
        slots = eng.runner._slot_tensor(seq, seq.cached_len)
        got[seq.request_id] = (list(seq.tokens[:seq.cached_len]), eng.kv.kv[:, slots].clone())
        real(seq)
    monkeypatch.setattr(eng.scheduler, "remove", remove)
    return got


@pytest.mark.parametrize("block", [2, 3, 5])
@pytest.mark.parametrize("width", [2, 4])
def test_greedy_is_ar_greedy_at_every_width(dirs, eng, block, width):
    base = make_engine(dirs["base"])
    for seed in range(3):
        prompt = ck.random_prompt(seed + 7 * block + width, 3 + 5 * seed)
        ar = base.generate([prompt], _ar(23))[0]
        out = eng.generate([prompt], _exact(block, width, max_tokens=23))[0]
        assert out.token_ids == ar.token_ids
        assert out.num_forwards <= ar.num_forwards


def test_a_runner_up_candidate_drafts_the_next_token(eng, monkeypatch):
    """First drafts wrong but the AR token a runner-up: the candidate's own row (the AR model run on it)
    drafts the token after it, and that draft is the AR token, so the forward after such a rejection
    commits two tokens where width 1 (whose fallback drafts this drafter also gets wrong) commits one.
    The cache left behind is exactly AR decoding's."""
    prompts = [ck.random_prompt(90 + i, 4 + 3 * i) for i in range(3)]
    answers = {tuple(p): eng.generate([p], _ar(30))[0].token_ids for p in prompts}
    kv = _snapshot_kv(eng, monkeypatch)
    for i, p in enumerate(prompts):
        eng.add_request(f"ar{i}", p, _ar(30))
        eng.add_request(f"all{i}", p, _exact(2, 1, max_tokens=30))
        eng.add_request(f"side{i}", p, _exact(2, 3, max_tokens=30))
    oracle = _runner_up_oracle(answers, lambda n: True)
    real_propose, real_follow, following = eng.verified.propose, eng.verified.follow, []

    def follow(seq, row, later):  # the candidate row's drafts are the model's own
        following.append(True)
        try:
            return real_follow(seq, row, later)
        finally:
            following.pop()
    monkeypatch.setattr(eng.verified, "follow", follow)
    monkeypatch.setattr(eng.verified, "propose", lambda seq, rows: real_propose(seq, rows) if following
                        else oracle(seq, rows))
    outs = {}
    while eng.has_unfinished():
        outs |= {o.request_id: o for o in eng.step() if o.finished}
    for i, p in enumerate(prompts):
        side, narrow = outs[f"side{i}"], outs[f"all{i}"]
        assert side.token_ids == narrow.token_ids == answers[tuple(p)]
        assert narrow.num_forwards >= 29  # every first draft wrong: one token a forward
        # Rejected (1 token), then the candidate's draft accepted (2 tokens), and so on.
        assert side.num_forwards <= 2 + 2 * 29 // 3
        tokens, cached = kv[f"side{i}"]
        ar_tokens, ar_cached = kv[f"ar{i}"]
        n = min(len(tokens), len(ar_tokens))
        assert n > 20 and tokens[:n] == ar_tokens[:n]
        assert torch.equal(cached[:, :n], ar_cached[:, :n])


def test_batched_and_preempted_equal_alone(dirs, eng):
    reqs = []
    for i in range(8):
        params = _exact([2, 3, 4][i % 3], [1, 2, 3, 4][i % 4], max_tokens=12 + 2 * i,
                        temperature=[0.0, 0.0, 0.8][i % 3], seed=i)
        reqs.append((f"t{i}", ck.random_prompt(30 + i, 3 + i), params))
    alone = {rid: eng.generate([p], params)[0].token_ids for rid, p, params in reqs}
    done = run_staggered(eng, reqs, join_every=2)
    assert {rid: o.token_ids for rid, o in done.items()} == alone
    small = make_engine(dirs["arp"], kv_cache_memory=64 * 512, page_size=4)  # 64 slots: preemption is certain
    done = run_staggered(small, reqs, join_every=1)
    assert small.scheduler.num_preemptions > 0
    assert {rid: o.token_ids for rid, o in done.items()} == alone
    assert small.pool.num_free == small.pool.num_pages


def test_sampling_ignores_the_width(eng):
    prompt = ck.random_prompt(5, 6)
    outs = [eng.generate([prompt], _exact(3, w, max_tokens=20, temperature=0.9, seed=3))[0] for w in (1, 4)]
    assert outs[0].token_ids == outs[1].token_ids and outs[0].num_forwards == outs[1].num_forwards


def test_width_is_checked_and_read_from_the_checkpoint(eng):
    for bad in (0, 9, 2.0, True):
        with pytest.raises(RequestError, match="draft_width"):
            DecodeParams(exact=True, draft_width=bad).verify()
    with pytest.raises(RequestError, match="exact mode only"):
        DecodeParams(draft_width=2).verify()
    spec = ModelSpec("llama", 64, 16, 1, 2, 1, 8, 32, 1e-5, 1e4, 64, mask_token_id=3)
    _apply_d2f_section(spec, {"draft_width": 3}, "x")
    assert spec.draft_width == 3
    with pytest.raises(CheckpointError, match="draft_width"):
        _apply_d2f_section(spec, {"draft_width": 0}, "x")
    eng.spec.draft_width = 3  # the model's default applies when the request names none
    try:
        assert eng.resolve_knobs(DecodeParams(exact=True)).draft_width == 3
        assert eng.resolve_knobs(DecodeParams(exact=True, draft_width=1)).draft_width == 1
    finally:
        eng.spec.draft_width = 1


def test_fallback_drafts_keep_a_forward_after_a_rejection_checking(eng, monkeypatch):
    """With the fallback group, the forward after a rejection checks drafts made without the rejected
    position's token, where without it that forward has none: same answer, fewer forwards."""
    prompt = ck.random_prompt(77, 6)
    ref = eng.generate([prompt], _ar(40))[0].token_ids

    def propose(seq, rows):  # right, except a first draft at an even index
        n = seq.end - seq.prompt_len
        return [(ref[i] + 1) % ck.VOCAB if i % 2 == 0 and j == 0 else ref[i]
                for j, i in enumerate(range(n, n + rows.shape[0]))], None, []
    monkeypatch.setattr(eng.verified, "propose", propose)
    forwards = {}
    for fallback in (False, True):
        monkeypatch.setattr(eng.verified, "fallback", fallback)
        out = eng.generate([prompt], _exact(3, 1, max_tokens=40))[0]
        assert out.token_ids == ref
        forwards[fallback] = out.num_forwards
    assert forwards[True] < forwards[False]


def test_a_pool_without_room_for_the_extra_rows_refuses_not_hangs(dirs):
    small = make_engine(dirs["arp"], kv_cache_memory=40 * 512, page_size=4)  # 40 slots
    small.validate([5] * 8, _exact(4, 1, max_tokens=29))  # 37 + 3 fallback masks
    with pytest.raises(RequestError, match="extra draft rows needs 42 KV slots"):
        small.validate([5] * 8, _exact(4, 3, max_tokens=29))  # 37 + 3 fallback masks + 2 candidates
    small.validate([5] * 8, DecodeParams(max_tokens=32, block_size=1))
