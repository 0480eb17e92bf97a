"""Exact mode (speed 'exact'): mask rows draft, the AR rows of the next forward verify.

The backbone: greedy output is the AR model's greedy output for any drafter and block size, alone, batched
and preempted; sampled output follows the AR distribution; a forward never commits past max_tokens or a stop
token; rejected positions never reach the cache and their pages go back at once.
"""

import pytest
import torch

from d2f.engine.decoding import Verified
from d2f.engine.errors import RequestError
from d2f.engine.params import DecodeParams
from d2f.engine.sequence import DraftStats, Knobs, Sequence
from tests.support import checkpoints as ck
from tests.support.batching import run_staggered
from tests.support.engines import make_engine


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exact")
    hf, base, arp = ck.write_ar_preserving_pair(root, scale=0.1)
    return {"base": base, "arp": arp, "hf": hf}


@pytest.fixture(scope="module")
def eng(dirs):
    return make_engine(dirs["arp"])



def _exact(block: int | None = None, **kw) -> DecodeParams:
    kw.setdefault("ignore_eos", True)
    return DecodeParams(block_size=block, exact=True, **kw)


def _ar(max_tokens: int, **kw) -> DecodeParams:
    kw.setdefault("ignore_eos", True)
    return DecodeParams(max_tokens=max_tokens, block_size=1, **kw)


def _oracle(answers: dict[tuple, list[int]], wrong=lambda i: False):
    """A drafter (Verified.propose) that proposes the AR answer itself (looked up by prompt), but at the
    answer indices `wrong` names: those get another token."""
    def propose(seq, rows):
        ref, n = answers[tuple(seq.prompt_ids)], seq.end - seq.prompt_len
        return [(ref[i] + 1) % ck.VOCAB if wrong(i) else ref[i] for i in range(n, n + rows.shape[0])], None, []
    return propose


def _record_windows(eng, monkeypatch) -> list:
    works = []
    real = eng.runner.run
    monkeypatch.setattr(eng.runner, "run", lambda ws: works.extend(ws) or real(ws))
    return works


@pytest.mark.parametrize("block", range(2, 9))
def test_greedy_is_ar_greedy(dirs, eng, block):
    base = make_engine(dirs["base"])  # the AR model itself: the checkpoint without mask token or adapter
    for seed in range(3):
        prompt = ck.random_prompt(seed + 10 * block, 3 + 4 * seed)
        ar = base.generate([prompt], _ar(21))[0]
        assert eng.generate([prompt], _ar(21))[0].token_ids == ar.token_ids  # block size 1 is AR here too
        out = eng.generate([prompt], _exact(block, max_tokens=21))[0]
        assert out.token_ids == ar.token_ids
        assert out.num_forwards <= ar.num_forwards
        stats = out.draft_stats
        assert len(stats.proposed) == block - 1 and all(a <= p for a, p in zip(stats.accepted, stats.proposed))


def test_a_drafter_that_is_right_commits_whole_windows(eng, monkeypatch):
    """Drafts equal to the AR answer (but at chosen indices): accepted prefixes, the bonus token, and the KV
    of accepted drafts reused; the answer stays AR's and takes far fewer forwards."""
    prompts = [ck.random_prompt(70 + i, 5 + i) for i in range(3)]
    answers = {tuple(p): eng.generate([p], _ar(40))[0].token_ids for p in prompts}
    for block, wrong in ((4, lambda i: False), (4, lambda i: i % 7 == 3), (8, lambda i: i % 11 in (3, 9))):
        monkeypatch.setattr(eng.verified, "propose", _oracle(answers, wrong))
        for p in prompts:
            out = eng.generate([p], _exact(block, max_tokens=40))[0]
            assert out.token_ids == answers[tuple(p)]
            assert out.num_forwards < 40 / 2
            assert out.draft_stats.accepted[0] > 0
        if block == 4 and not wrong(3):  # all right: every forward after the first commits B tokens
            assert out.num_forwards == 1 + -(-39 // 4)
            assert out.draft_stats.accepted == out.draft_stats.proposed


def test_never_past_max_tokens_or_a_stop_token(eng, monkeypatch):
    prompt = ck.random_prompt(5, 6)
    ref = eng.generate([prompt], _ar(30))[0].token_ids
    monkeypatch.setattr(eng.verified, "propose", _oracle({tuple(prompt): ref}))  # always right: whole windows
    last = []  # each window's last position (not sequence index: a fallback group reuses positions)
    real = eng.runner.run
    monkeypatch.setattr(eng.runner, "run", lambda ws: last.extend(
        int(w.seq.algorithm.positions(w.seq, w.start, w.end).max()) for w in ws) or real(ws))
    for max_tokens in range(1, 12):
        out = eng.generate([prompt], _exact(8, max_tokens=max_tokens))[0]
        assert (out.token_ids, out.finish_reason) == (ref[:max_tokens], "length")
        assert max(last) < len(prompt) + max_tokens
        last.clear()
    first = {}
    for i, t in enumerate(ref):
        first.setdefault(t, i)
    stop = next(t for t, i in first.items() if i >= 6)
    out = eng.generate([prompt], _exact(8, max_tokens=30, stop_token_ids=[stop]))[0]
    assert (out.token_ids, out.finish_reason) == (ref[:first[stop]], "stop")


@pytest.mark.parametrize("fallback", [False, True])
def test_rejection_frees_kv(dirs, monkeypatch, fallback):
    """Every draft wrong: each forward commits one token, the cache ends before the first rejected position,
    and the pages past the next window go back to the pool at once (without a fallback group the window
    after a rejection is narrower, so pages are given back every other forward)."""
    eng = make_engine(dirs["arp"], page_size=2)
    eng.verified.fallback = fallback
    prompt = ck.random_prompt(9, 5)
    ref = eng.generate([prompt], _ar(24))[0].token_ids
    monkeypatch.setattr(eng.verified, "propose", _oracle({tuple(prompt): ref}, wrong=lambda i: True))
    works = _record_windows(eng, monkeypatch)
    eng.add_request("r", prompt, _exact(8, max_tokens=24))
    seq, shrunk = eng.requests["r"], 0
    while True:
        eng.step()
        if "r" not in eng.requests:
            break
        w = works.pop()
        assert seq.end == w.commit_upto + 1  # the drafts were all rejected: the AR token alone
        assert seq.cached_len == seq.end - 1  # nothing past the last committed row that was fed
        if len(w.predict) > 8:  # the window held drafts: the pages past the next window were given back
            # (the next one may be wider, its drafts coming from the fallback group: the scheduler grows it)
            assert len(seq.pages) <= eng.pool.pages_needed(seq.end + eng.verified.growth(seq))
            shrunk += len(seq.pages) < eng.pool.pages_needed(w.end)
        assert eng.pool.num_used == len(seq.pages)
    assert shrunk > 5 or fallback
    assert eng.pool.num_free == eng.pool.num_pages


def test_batched_equals_alone_with_other_modes(eng):
    reqs = []
    for i in range(8):
        prompt = ck.random_prompt(40 + i, 3 + 2 * i)
        if i % 4 == 3:
            params = DecodeParams(max_tokens=10 + i, block_size=4, tau_conf=0.3, ignore_eos=True)  # not exact
        else:
            params = _exact([2, 4, 6, 8][i % 4], max_tokens=9 + 2 * i, temperature=[0.0, 0.8][i % 2], seed=i,
                            top_k=[0, 20][i % 3 == 0])
        reqs.append((f"b{i}", prompt, params))
    alone = {rid: eng.generate([p], params)[0].token_ids for rid, p, params in reqs}
    done = run_staggered(eng, reqs, join_every=2)
    assert {rid: o.token_ids for rid, o in done.items()} == alone


def test_alone_equals_preempted(dirs, eng):
    reqs = [(f"p{i}", ck.random_prompt(60 + i, 4 + i), _exact([3, 5, 8][i % 3], max_tokens=30, temperature=[0, 0.7][i % 2],
                                                          seed=i)) for i in range(6)]
    alone = {rid: eng.generate([p], params)[0].token_ids for rid, p, params in reqs}
    small = make_engine(dirs["arp"], kv_cache_memory=48 * 512, page_size=4)  # 48 slots: preemption is certain
    done = run_staggered(small, reqs, join_every=1)
    assert small.scheduler.num_preemptions > 0
    assert {rid: o.token_ids for rid, o in done.items()} == alone
    assert small.pool.num_free == small.pool.num_pages


def test_sampling_follows_the_ar_distribution(dirs, eng):
    """The first two tokens of thousands of seeded exact-mode samples against the AR model's own joint
    distribution (computed by transformers): the second token was drafted and verified (accepted or resampled)."""
    prompt, n, temp = [5, 17, 33, 8, 41], 1500, 1.0
    hf = dirs["hf"]
    with torch.no_grad():
        p1 = (hf(torch.tensor([prompt])).logits[0, -1] / temp).softmax(-1)
        seconds = torch.tensor([prompt + [t] for t in range(ck.VOCAB)])
        p2 = (hf(seconds).logits[:, -1] / temp).softmax(-1)
    joint = (p1[:, None] * p2).double()
    many = make_engine(dirs["arp"], max_num_seqs=1024)
    outs = many.generate([prompt] * n, [_exact(2, max_tokens=3, temperature=temp, seed=s) for s in range(n)])
    counts = torch.zeros_like(joint)
    for o in outs:
        counts[o.token_ids[0], o.token_ids[1]] += 1
    accepted = sum(o.draft_stats.accepted[0] for o in outs)
    assert 0.05 * n < accepted < 0.95 * n  # both branches, accept and resample, ran many times
    assert _chi_square_p(counts.flatten(), joint.flatten() * n) > 1e-3


def test_acceptance_rule_gives_the_target_distribution():
    """Verified.verify alone, two drafts from a drafter unlike the target: (first, second) committed token
    follows p x p (the second drawn from p when the round ended before it, as the next forward would)."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.6, 0.05, 0.2], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.5, 0.1, 0.2, 0.1], [0.3, 0.1, 0.3, 0.2, 0.1]])
    knobs = Knobs(block_size=3, tau_add=1, tau_act=1, tau_conf=1, max_tokens=8, temperature=1.0, top_p=1.0,
                  top_k=0, stop_ids=frozenset(), exact=True)
    seq = Sequence("u", [1], knobs, mask_id=0, generator=g)
    rule, n = Verified(), 8000
    counts = torch.zeros(5, 5, dtype=torch.float64)
    for _ in range(n):
        seq.drafts = torch.multinomial(q, 1, generator=g).squeeze(-1).tolist()
        seq.draft_probs = q
        accepted, token = rule.verify(seq, p.log())
        out = seq.drafts[:accepted] + [token]
        if len(out) == 1:
            out.append(int(torch.multinomial(p[1], 1, generator=g)))
        counts[out[0], out[1]] += 1
    expected = (p[0][:, None] * p[1][None, :]).double().flatten() * n
    assert _chi_square_p(counts.flatten(), expected) > 1e-3


def _chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's test; cells expecting fewer than 5 are pooled into one."""
    small = expected < 5
    obs = torch.cat([observed[~small], observed[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = exp > 0
    stat = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_refusals_and_pure_ar(engines, dirs):
    for family in ("llada", "dream", "llama_d2f"):  # every position attends to masks: no AR rows
        with pytest.raises(RequestError, match="AR-preserving"):
            engines[family].validate([5, 6], _exact(max_tokens=4))
    with pytest.raises(RequestError, match="exact mode"):
        DecodeParams(exact=True, tau_conf=0.9).verify()
    with pytest.raises(RequestError, match="exact must be"):
        DecodeParams(exact=1).verify()
    ar = make_engine(dirs["base"])  # a pure AR model: exact mode is its plain decoding
    prompt = ck.random_prompt(3, 7)
    assert ar.generate([prompt], _exact(max_tokens=12))[0].token_ids == ar.generate([prompt], _ar(12))[0].token_ids
    # Exact mode's windows end at max_tokens: no rounding up to whole blocks.
    eng = make_engine(dirs["arp"], max_model_len=20)
    eng.validate([5] * 8, _exact(8, max_tokens=12))
    with pytest.raises(RequestError, match="context is 20"):
        eng.validate([5] * 8, _exact(8, max_tokens=13))
    stats = eng.generate([[5] * 8], _exact(8, max_tokens=12))[0].draft_stats
    assert isinstance(stats, DraftStats)


@pytest.mark.live
def test_generate_cli_speed_exact(dirs, eng):
    import json
    import subprocess
    import sys

    def d2f(*args):
        return subprocess.run([sys.executable, "-m", "d2f", "generate", "--model", str(dirs["arp"]), "--dtype", "fp32",
                               "--prompt-ids", "5,9,13,2", "--max-tokens", "12", *args],
                              capture_output=True, text=True, timeout=120)
    res = d2f("--speed", "exact", "--block-size", "3", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["token_ids"] == eng.generate([[5, 9, 13, 2]], _ar(12, ignore_eos=False))[0].token_ids
    assert len(got["drafts_proposed"]) == len(got["drafts_accepted"]) == 2
    bad = d2f("--speed", "warp")
    assert bad.returncode == 2 and "expected quality, balanced, fast, exact" in bad.stderr
