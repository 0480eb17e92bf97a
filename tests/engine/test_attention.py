"""The decode call (single-query rows in one fixed-shape call) equals SDPA on every visible set the engine
builds (fp32 tight; bf16 within one output rounding and no further from the exact answer than SDPA), and a
row's bits depend only on its query, the keys it sees, its GEMM row and its key bucket: never on the
call's other rows or on what lies in the cache past the call's keys. That is what lets exact mode put AR's
rows and drafting rows in one call (decode_calls packs them so)."""
import random

import pytest
import torch
import torch.nn.functional as F

from d2f.engine.decoding.calls import decode_calls
from d2f.engine.models.attention import BUCKET, ROWS, bucket, decode_attention

D = 64
HEADS = {"gqa": (9, 3), "mha": (4, 4)}
# bf16 outputs of the two paths differ by at most a rounding of the output: 2^-7 relative.
BF16_TOL = 2 ** -7


def _sdpa(q, kv, visible):
    """q [R, Hq, D], kv [Lk, 2 * Hkv, D], visible [R, Lk] bool -> [R, Hq * D], each row on its own."""
    hkv = kv.shape[1] // 2
    k, v = kv[:, :hkv].transpose(0, 1)[None], kv[:, hkv:].transpose(0, 1)[None]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k, v, attn_mask=visible[None, None],
                                         enable_gqa=q.shape[1] != hkv)
    return out[0].transpose(0, 1).reshape(q.shape[0], -1)


def _call(q, kv, visible, place):
    """decode_attention as the runner feeds it: keys padded to the bucket, the bias from `visible`."""
    lk = kv.shape[0]
    m = bucket(lk)
    padded = torch.cat([kv, torch.randn(m - lk, *kv.shape[1:]).to(kv.dtype)])
    rows = torch.full((q.shape[0], m), float("-inf"))
    rows[:, :lk].masked_fill_(visible, 0.0)
    bias = torch.zeros(ROWS, m)
    bias[torch.tensor(place)] = rows
    return decode_attention(q, padded, lk, torch.tensor(place), bias)


def _inputs(gen, rows, lk, heads, dtype):
    hq, hkv = heads
    q = torch.randn(rows, hq, D, generator=gen) * 2
    kv = torch.randn(lk, 2 * hkv, D, generator=gen) * torch.tensor([2.0] * hkv + [1.0] * hkv)[:, None]
    return q.to(dtype), kv.to(dtype)


def _visible(rng: random.Random, rows: int, lk: int) -> torch.Tensor:
    """What exact mode's calls hold: causal prefixes (AR's rows) and masks that see the prefix and some
    of the window, with holes."""
    vis = torch.zeros(rows, lk, dtype=torch.bool)
    for r in range(rows):
        if rng.random() < 0.5:
            vis[r, :rng.randrange(1, lk + 1)] = True
        else:
            prefix = rng.randrange(0, lk)
            vis[r, :prefix] = True
            vis[r, prefix:] = torch.rand(lk - prefix) < 0.5
            vis[r, rng.randrange(0, lk)] = True  # never a row that sees nothing
    return vis


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", list(HEADS))
def test_equals_sdpa(dtype, heads):
    rng, gen = random.Random(f"{dtype}{heads}"), torch.Generator().manual_seed(len(heads))
    for lk in [1, 2, 5, 63, 64, 65, 100, 300, 700]:
        rows = rng.randrange(1, ROWS + 1)
        q, kv = _inputs(gen, rows, lk, HEADS[heads], dtype)
        visible = _visible(rng, rows, lk)
        got = _call(q, kv, visible, rng.sample(range(ROWS), rows))
        want = _sdpa(q, kv, visible)
        assert got.shape == want.shape and got.dtype == dtype
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(got, want, rtol=BF16_TOL, atol=BF16_TOL)
            # ... and no further from the exact answer than SDPA is.
            exact = _sdpa(q.double(), kv.double(), visible)
            assert (got.double() - exact).abs().max() <= (want.double() - exact).abs().max() * 1.01 + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_gets_its_lone_bits_in_any_call(dtype):
    """AR decoding computes position p alone, in GEMM row p % ROWS over keys [0, p]; exact mode computes
    it beside other rows (drafts, masks seeing more keys) over a longer key list. Same bits, every time."""
    rng, gen = random.Random(str(dtype)), torch.Generator().manual_seed(11)
    for heads in HEADS.values():
        for p in list(range(0, 70)) + [126, 127, 128, 255, 256, 700]:
            extra = rng.randrange(0, ROWS)  # rows after p in the same call, seeing up to ROWS more keys
            lk = p + 1 + extra
            if bucket(lk) != bucket(p + 1):
                lk = bucket(p + 1)
            q, kv = _inputs(gen, ROWS, lk, heads, dtype)
            alone = _call(q[:1], kv[:p + 1], torch.ones(1, p + 1, dtype=torch.bool), [p % ROWS])
            visible = _visible(rng, ROWS, lk)
            visible[0] = torch.arange(lk) <= p
            others = [s for s in range(ROWS) if s != p % ROWS]
            rng.shuffle(others)
            together = _call(q, kv, visible, [p % ROWS] + others)
            assert torch.equal(together[0], alone[0]), (heads, p, lk)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stale_slots_past_the_keys_never_leak(dtype):
    """The bucket's padding is whatever the cache holds there (another sequence's K/V, a failed forward's
    NaN): it must not change a bit, let alone poison the row."""
    gen = torch.Generator().manual_seed(3)
    q, kv = _inputs(gen, 2, 40, HEADS["gqa"], dtype)
    m = bucket(40)
    bias = torch.zeros(ROWS, m)
    bias[:, 40:] = float("-inf")
    place = torch.tensor([1, ROWS - 1])
    clean = decode_attention(q, torch.cat([kv, torch.zeros(m - 40, *kv.shape[1:]).to(dtype)]), 40, place, bias)
    stale = torch.cat([kv, torch.full((m - 40, *kv.shape[1:]), float("nan")).to(dtype)])
    got = decode_attention(q, stale, 40, place, bias)
    assert torch.equal(got, clean) and bool(torch.isfinite(got).all())
    assert bool(torch.isnan(stale[40:]).all())  # the caller's keys are read, never written


def test_bad_head_counts_are_refused():
    q, kv = _inputs(torch.Generator().manual_seed(0), 1, 10, (4, 3), torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        _call(q, kv, torch.ones(1, 10, dtype=torch.bool), [0])


def _ar_call(p: int) -> tuple[int, int]:
    """(GEMM row, keys) of AR decoding's own call for position p."""
    return p % ROWS, bucket(p + 1)


def test_decode_calls_give_every_exact_row_ars_call():
    """Random windows of exact mode's shape: committed and draft rows (exact, causal prefixes), then
    drafting rows. Every call holds consecutive rows, at most ROWS, in distinct GEMM rows; an exact row
    sits where AR's own call puts it over as many keys; a drafting row sees all its keys."""
    rng = random.Random(5)
    for _ in range(400):
        c = rng.randrange(1, 3 * BUCKET)
        start = c - rng.randrange(1, 4)
        clean = rng.randrange(0, 4)  # drafts
        free = rng.randrange(0, 9)
        end = c + clean + free
        rows = list(range(start, end))
        visible = torch.stack([torch.arange(end) <= p if p < c + clean else torch.rand(end) < 0.7 for p in rows])
        exact = [p if p < c + clean else None for p in rows]
        calls = decode_calls(end, visible, exact)
        assert sum(call.rows for call in calls) == len(rows)
        at = 0
        for call in calls:
            assert 1 <= call.rows <= ROWS and len(set(call.place)) == call.rows
            assert all(0 <= s < ROWS for s in call.place)
            for j in range(call.rows):
                p = rows[at + j]
                assert torch.equal(call.visible[j], visible[at + j, :call.keys])
                if exact[at + j] is not None:
                    assert (call.place[j], bucket(call.keys)) == _ar_call(p)
                else:
                    assert call.keys == end
            at += call.rows


def test_decode_calls_take_explicit_keys_and_split_only_when_needed():
    keys = torch.tensor([0, 1, 2, 7, 8])
    visible = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    calls = decode_calls(keys, visible, [2, None])
    assert len(calls) == 1 and torch.equal(calls[0].keys, keys) and calls[0].place[0] == 2 % ROWS
    # An exact row in a lower bucket than the call's other rows needs a call of its own.
    n = BUCKET + 1
    visible = torch.ones(2, n, dtype=torch.bool)
    visible[0, BUCKET - 1:] = False
    calls = decode_calls(n, visible, [BUCKET - 2, None])
    assert [call.rows for call in calls] == [1, 1] and calls[0].keys == BUCKET and calls[1].keys == n
