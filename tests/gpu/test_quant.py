"""On the tier's device: the weight-only int8 / int4 kernels (on CUDA: aten's int8 kernel and tinygemm's int4
packing, never run before this tier) against the dequantized weights, their rows alone against the same rows in
a batch, and the engine's exactness with them."""
import pytest
import torch

from d2f.engine.models.quant import quantize, quantized_linear
from tests.support.engines import make_engine
from tests.support.exactness import assert_batched_equals_alone, assert_cached_equals_recompute

pytestmark = pytest.mark.gpu

MODES = ["int8", "int4"]
# (out, in): the tiny models' 64 and 96 in-features, SmolLM2's 576 (4.5 x 128: CUDA packs fewer k-tiles) and 1536.
SHAPES = [(96, 64), (64, 96), (960, 576), (576, 1536)]


def _layer(mode: str, out_in: tuple[int, int], device: str):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_in, generator=g) * 0.05
    bias = torch.randn(out_in[0], generator=g) * 0.1
    q = quantize(w, mode, 32)
    return q, quantized_linear(q, torch.bfloat16, bias, device), bias


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out_in", SHAPES)
def test_kernel_computes_the_dequantized_weights(device, mode, out_in):
    q, lin, bias = _layer(mode, out_in, device)
    x = torch.randn(37, out_in[1], generator=torch.Generator().manual_seed(1)).bfloat16()
    got = lin(x.to(device)).double().cpu()
    ref = x.double() @ q.dequantize().double().T + bias.double()
    # bf16: the output's rounding plus the scales' (8 significant bits)
    assert (got - ref).abs().max().item() <= 2 ** -7 * ref.abs().max().item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out_in", SHAPES)
def test_kernel_rows_alone_equal_rows_in_a_batch(device, mode, out_in):
    """Each output of these kernels is one row's own dot product, whatever the row count."""
    _, lin, _ = _layer(mode, out_in, device)
    x = torch.randn(64, out_in[1], generator=torch.Generator().manual_seed(2)).bfloat16().to(device)
    whole = lin(x)
    for n in (1, 3, 8, 16, 17, 33):
        for start in (0, 64 - n):
            assert torch.equal(lin(x[start:start + n]), whole[start:start + n]), (n, start)


@pytest.mark.parametrize("mode", MODES)
def test_engine_cached_equals_recompute(ckpt_dirs, device, mode):
    eng = make_engine(ckpt_dirs["dream"], quantization=mode, dtype="bf16", device=device)
    for tau in (0.9, 0.3):
        assert_cached_equals_recompute(eng, [5, 9, 13, 2, 40, 7], block=4, tau_add=0.1, tau_act=0.9, tau_conf=tau)


@pytest.mark.parametrize("mode", ["none", *MODES])
@pytest.mark.parametrize("family", ["dream", "llama_d2f"])
def test_engine_batched_equals_alone_in_bf16(ckpt_dirs, device, mode, family):
    """bf16 is where batch-dependent bits surface first; on CUDA the unquantized head and (mode none) every
    matmul go through cuBLAS, whose kernel choice depends on the row count."""
    assert_batched_equals_alone(ckpt_dirs[family], family, seed=3, n=8, join_every=1, quantization=mode,
                                dtype="bf16", device=device)
