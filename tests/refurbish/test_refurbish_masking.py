"""Refurbish noise and attention masks: monotone in-bounds ratios, untouched prompts, the engine's block mask."""
from types import SimpleNamespace

import pytest
import torch

from d2f.engine.runner import visible_end as engine_visible_end
from d2f.refurbish.data import Example, collate
from d2f.refurbish.masking import block_causal_mask, mask_answer, sample_block_ratios


@pytest.mark.parametrize("lo,hi", [(0.2, 0.7), (0.1, 0.9), (0.5, 0.5)])
@pytest.mark.parametrize("blocks", [1, 2, 7])
def test_block_ratios_are_monotone_and_within_bounds(lo, hi, blocks):
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        r = sample_block_ratios(blocks, lo, hi, g)
        assert r.shape == (blocks,)
        assert bool((r >= lo - 1e-6).all() and (r <= hi + 1e-6).all())
        assert bool((r[1:] >= r[:-1]).all())


def test_reference_first_ratio_is_uniform_over_the_lower_half_plus_0_2():
    """Reference: p1 = U/2 + 0.2, so p1 ~ U[0.2, 0.7] with mean 0.45, and it reaches both ends."""
    g = torch.Generator().manual_seed(1)
    firsts = torch.stack([sample_block_ratios(4, generator=g)[0] for _ in range(4000)])
    assert abs(float(firsts.mean()) - 0.45) < 0.01
    assert float(firsts.min()) < 0.21 and float(firsts.max()) > 0.69


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        sample_block_ratios(3, 0.0, 0.5)  # the loss divides by the ratio
    with pytest.raises(ValueError):
        sample_block_ratios(3, 0.8, 0.3)


def test_prompt_tokens_are_never_masked_and_answer_rates_follow_ratios():
    g = torch.Generator().manual_seed(2)
    ids = torch.arange(10, 10 + 5 + 32)
    counts = torch.zeros(len(ids))
    ratios = torch.tensor([0.2, 0.4, 0.6, 0.7])
    for _ in range(2000):
        noisy, masked, p = mask_answer(ids, 5, 8, ratios, 99, g)
        assert not masked[:5].any() and torch.equal(noisy[:5], ids[:5])
        assert bool((noisy[masked] == 99).all()) and torch.equal(noisy[~masked], ids[~masked])
        assert masked.any()
        counts += masked
    rate = counts / 2000
    for b, want in enumerate(ratios.tolist()):
        assert abs(float(rate[5 + 8 * b: 13 + 8 * b].mean()) - want) < 0.03


def test_collated_batch_keeps_prompts_clean():
    g = torch.Generator().manual_seed(3)
    examples = [Example([5, 6, 7], [10, 11, 12, 13, 2]), Example([8], [20, 21, 2])]
    for _ in range(50):
        b = collate(examples, block_size=4, lo=0.2, hi=0.7, mask_id=95, eos_id=2, pad_id=0, max_len=64,
                    prompt_causal=False, ar_teacher=False, generator=g)
        assert not b.masked[0, :3].any() and not b.masked[1, :1].any()
        assert torch.equal(b.noisy[0, :3], torch.tensor([5, 6, 7]))
        # Answers ending in EOS are padded with EOS to whole blocks: 5 -> 8 answer tokens.
        assert b.ids[0, 3:].tolist() == [10, 11, 12, 13, 2, 2, 2, 2]
        assert not b.masked[1, 5:].any()  # right padding is never a target


@pytest.mark.parametrize("prompt_causal", [False, True])
def test_student_mask_is_the_engines_block_causal_mask(prompt_causal):
    length, prompt, block = 13, 4, 3
    seq = SimpleNamespace(prompt_len=prompt, knobs=SimpleNamespace(block_size=block))
    ends = engine_visible_end(seq, 0, length, prompt_causal)
    expect = torch.arange(length)[None, :] < ends[:, None]
    assert torch.equal(block_causal_mask(length, prompt, block, prompt_causal), expect)


def test_block_mask_by_hand():
    """Prompt of 2 (one bidirectional block), answer blocks of 2, one padding position at the end."""
    want = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 1],  # padding sees only itself, and nothing sees it
    ], dtype=torch.bool)
    assert torch.equal(block_causal_mask(7, 2, 2, False, valid=6), want)
