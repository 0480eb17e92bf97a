"""Single-query matmul attention equals SDPA on every mask the runner builds (fp32 tight; bf16 within one
output rounding and no further from the exact answer than SDPA); the dispatch picks it for one query."""
import random
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from d2f.engine.models.attention import attention, matmul_attention
from d2f.engine.decoding import ARPreserving
from d2f.engine.runner import visible_end

D = 64
HEADS = {"gqa": (9, 3), "mha": (4, 4)}
# bf16 outputs of the two paths differ by at most a rounding of the output: 2^-7 relative.
BF16_TOL = 2 ** -7


def _sdpa(q, k, v, mask):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          attn_mask=mask, enable_gqa=q.shape[2] != k.shape[2]).transpose(1, 2)


def _window(rng: random.Random, q_len: int, prompt_causal: bool, cached: int = 300) -> dict:
    """A window as the scheduler makes them: tokens [start, end) of a sequence whose window ends at a block
    boundary; either a first forward from position 0, a chunk of a causal prompt, or a window past up to
    `cached` cached tokens."""
    block = rng.choice([1, 2, 4, 8, 32])
    kind = rng.random()
    if kind < 0.25:  # first forward: prompt and whole blocks
        blocks = rng.randrange(0, q_len // block + 1)
        prompt = q_len - blocks * block or q_len
        start, end = 0, q_len
    elif kind < 0.4 and prompt_causal:  # chunked prefill
        prompt = q_len + rng.randrange(0, cached)
        start = rng.randrange(0, prompt - q_len + 1)
        end = start + q_len
    else:
        prompt = rng.randrange(1, 40)
        end = prompt + (-(-q_len // block) + rng.randrange(0, cached // block + 1)) * block
        start = end - q_len
    masked = [False] * max(start, prompt) + [rng.random() < 0.6 for _ in range(end - max(start, prompt))]
    seq = SimpleNamespace(prompt_len=prompt, knobs=SimpleNamespace(block_size=block), is_masked=masked)
    return {"seq": seq, "start": start, "end": end}


def _mask(windows: list[dict], ar: bool, prompt_causal: bool) -> torch.Tensor:
    """[B, 1, Lq, Lk] exactly as Runner.run builds it (padded rows see key 0)."""
    q_len = max(w["end"] - w["start"] for w in windows)
    k_len = max(w["end"] for w in windows)
    rows = []
    for w in windows:
        n = w["end"] - w["start"]
        ends = visible_end(w["seq"], w["start"], w["end"], prompt_causal)
        if ar:
            m = torch.zeros(q_len, k_len, dtype=torch.bool)
            m[:n] = ARPreserving().attention_rows(w["seq"], w["start"], w["end"], k_len, ends)
            m[n:, 0] = True
        else:
            vis = F.pad(ends, (0, q_len - n), value=1)
            m = torch.arange(k_len)[None, :] < vis[:, None]
        rows.append(m)
    return torch.stack(rows)[:, None]


def _inputs(gen, b, lq, lk, heads, dtype):
    hq, hkv = heads
    q = torch.randn(b, lq, hq, D, generator=gen) * 2
    # K and V as the decoder slices them out of one gathered [B, Lk, 2 * Hkv, D] tensor.
    kv = torch.randn(b, lk, 2 * hkv, D, generator=gen) * torch.tensor([2.0] * hkv + [1.0] * hkv)[:, None]
    return q.to(dtype), kv[:, :, :hkv].to(dtype), kv[:, :, hkv:].to(dtype)


MASK_KINDS = ["block_causal", "causal_prompt", "ar_preserving", "none"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_equals_sdpa_on_runner_masks(dtype, heads, kind):
    rng, gen = random.Random(f"{dtype}{heads}{kind}"), torch.Generator().manual_seed(len(kind))
    for q_len in [1, 2, 3, 4, 5, 8, 13, 16, 31, 32, 33, 48, 64]:
        b = rng.choice([1, 2, 3, 8])
        causal = kind == "causal_prompt"
        windows = [_window(rng, rng.randrange(1, q_len + 1) if i else q_len, causal) for i in range(b)]
        mask = None if kind == "none" else _mask(windows, kind == "ar_preserving", causal)
        lk = max(w["end"] for w in windows)
        q, k, v = _inputs(gen, b, q_len, lk, HEADS[heads], dtype)
        got, want = matmul_attention(q, k, v, mask), _sdpa(q, k, v, mask)
        assert got.shape == want.shape and got.dtype == dtype
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(got, want, rtol=BF16_TOL, atol=BF16_TOL)
            # ... and no further from the exact answer than SDPA is.
            exact = _sdpa(q.double(), k.double(), v.double(), mask)
            assert (got.double() - exact).abs().max() <= (want.double() - exact).abs().max() * 1.01 + 1e-6


def test_runner_masks_have_no_fully_masked_row():
    rng = random.Random(3)
    for ar in (False, True):
        for _ in range(50):
            causal = rng.random() < 0.5
            windows = [_window(rng, rng.randrange(1, 40), causal) for _ in range(rng.randrange(1, 5))]
            assert _mask(windows, ar, causal).any(dim=-1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_row_gives_zeros_like_sdpa(dtype):
    q, k, v = _inputs(torch.Generator().manual_seed(0), 2, 5, 30, HEADS["gqa"], dtype)
    mask = torch.ones(2, 1, 5, 30, dtype=torch.bool)
    mask[1, 0, 2] = False
    got = matmul_attention(q, k, v, mask)
    assert torch.equal(got[1, 2], torch.zeros_like(got[1, 2]))
    assert torch.equal(_sdpa(q, k, v, mask)[1, 2], got[1, 2])


def test_dispatch_takes_the_matmul_path_for_one_query():
    gen = torch.Generator().manual_seed(4)
    for dtype, lq, window in [(torch.bfloat16, 1, True), (torch.bfloat16, 2, False), (torch.float32, 1, True)]:
        q, k, v = _inputs(gen, 2, lq, 100, HEADS["gqa"], dtype)
        path = matmul_attention if window else _sdpa
        assert torch.equal(attention(q, torch.cat([k, v], dim=2), None), path(q, k, v, None))


def test_bad_head_counts_are_refused():
    q, k, v = _inputs(torch.Generator().manual_seed(0), 1, 2, 10, (4, 3), torch.float32)
    with pytest.raises(ValueError, match="multiple"):
        matmul_attention(q, k, v, None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stacked_single_query_rows_get_their_lone_bits(dtype):
    """Exact mode stacks one-query rows with key sets of one length into one call; each row must get
    exactly the bits it gets alone (AR decoding's call), for any stack height and key count."""
    gen = torch.Generator().manual_seed(7)
    for heads in HEADS.values():
        for lk in list(range(1, 70)) + [127, 128, 129, 255, 256, 257, 700]:
            b = 2 + lk % 7
            q, k, v = _inputs(gen, b, 1, lk, heads, dtype)
            kv = torch.cat([k, v], dim=2)
            together = attention(q, kv, None)
            alone = torch.cat([attention(q[i:i + 1], kv[i:i + 1], None) for i in range(b)])
            assert torch.equal(together, alone), (heads, lk, b)
