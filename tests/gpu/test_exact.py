"""On the tier's device: cached == recomputed, greedy AR == transformers' generate, batched == alone (tokens,
fp32), and how far one row of a matmul moves with the rows beside it (cuBLAS picks kernels by row count)."""
import random

import pytest
import torch

from d2f.engine.models.linear import Linear
from d2f.engine.params import DecodeParams
from tests.support import checkpoints as ck
from tests.support.engines import make_engine
from tests.support.exactness import assert_batched_equals_alone, assert_cached_equals_recompute

pytestmark = pytest.mark.gpu

KNOBS = [(4, 0.1, 0.95, 0.9), (4, 0.0, 0.7, 0.05), (8, 0.25, 0.5, 0.2)]  # (block, tau_add, tau_act, tau_conf)


@pytest.fixture(scope="module")
def device_engines(ckpt_dirs, device) -> dict:
    return {name: make_engine(path, device=device) for name, path in ckpt_dirs.items()}


def _prompt(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, ck.VOCAB - 1) for _ in range(n)]


@pytest.mark.parametrize("family", ["llada", "dream", "llama_d2f"])
@pytest.mark.parametrize("knobs", KNOBS)
def test_cached_equals_recompute(device_engines, family, knobs):
    block, tau_add, tau_act, tau_conf = knobs
    if family == "llama_d2f":
        block //= 2
    for seed in range(2):
        assert_cached_equals_recompute(device_engines[family], _prompt(seed * 7 + block, 5 + 3 * seed), block=block,
                                       tau_add=tau_add, tau_act=tau_act, tau_conf=tau_conf)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_ar_equals_transformers_generate(device_engines, device, family):
    hf = (ck.hf_llama(seed=3, tie=True) if family == "llama" else ck.hf_qwen2(seed=4)).to(device)
    for seed in range(2):
        prompt = _prompt(100 + seed, 4 + seed * 5)
        out = device_engines[family].generate([prompt], DecodeParams(max_tokens=24, ignore_eos=True))[0]
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt], device=device), max_new_tokens=24, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
        assert out.token_ids == ref and out.num_forwards == 24


@pytest.mark.parametrize("family", ["llada", "dream", "llama_d2f"])
def test_batched_equals_alone(ckpt_dirs, device, family):
    assert_batched_equals_alone(ckpt_dirs[family], family, seed=len(family), n=10, abort=(1, 4), device=device)


# How far a row may move with its batch: fp32 summation order; in bf16, one rounding of the output.
ROW_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("out_in", [(960, 576), (3072, 576), (576, 1536), (49152, 576)])  # SmolLM2's matmuls
def test_a_rows_result_barely_depends_on_its_batch(device, dtype, out_in):
    """The engine's plain Linear: rows computed alone against the same rows inside 64. On CPU (oneDNN) they are
    bit-identical; on CUDA, cuBLAS may pick another kernel per row count, so this bounds the difference."""
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(out_in, generator=g) * 0.05).to(device=device, dtype=dtype)
    x = torch.randn(64, out_in[1], generator=g).to(device=device, dtype=dtype)
    lin = Linear(w)
    whole = lin(x).float()
    scale = whole.abs().max().item()
    worst = max((lin(x[s:s + n]).float() - whole[s:s + n]).abs().max().item()
                for n in (1, 2, 3, 7, 8, 9, 16, 31, 33) for s in (0, 64 - n))
    assert worst <= ROW_TOLERANCE[dtype] * scale, f"max |alone - batched| = {worst:.3g} (max |y| = {scale:.3g})"
