"""--quantization int8|int4 in the engine: batched == alone, cached == recomputed, logits close to a
dequantized fp32 reference, and the embedded model's int4 layers are its GGUF's own blocks."""
import logging

import pytest
import torch

from d2f.engine.models.checkpoint import read_spec
from d2f.engine.models.decoder import Decoder
from d2f.engine.models.loader import load_model
from d2f.engine.models.quant import Int4Linear, Int8Linear
from tests.support.engines import make_engine
from tests.support.exactness import assert_batched_equals_alone, assert_cached_equals_recompute
from tests.support.forward import IDS, block_mask, full_forward

MODES = ["int8", "int4"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_layer_matrix_is_quantized(ckpt_dirs, mode, dtype):
    eng = make_engine(ckpt_dirs["dream"], quantization=mode, dtype=dtype)
    kind = Int8Linear if mode == "int8" else Int4Linear
    assert all(isinstance(layer[name], kind) for layer in eng.model.layers for name in ("qkv", "o", "gate_up", "down"))
    assert eng.model.row_invariant  # both kernels give a row the same bits for any row count


@pytest.mark.parametrize("mode", ["none", *MODES])
@pytest.mark.parametrize("family", ["dream", "llama_d2f"])
def test_batched_equals_alone_in_bf16(ckpt_dirs, mode, family):
    """bf16 is where batch-dependent bits surface first (attention used to pad each sequence to its
    neighbours' lengths; int4 bf16 flipped a token that way)."""
    assert_batched_equals_alone(ckpt_dirs[family], family, seed=3, n=8, join_every=1, quantization=mode,
                                dtype="bf16")


@pytest.mark.parametrize("mode", MODES)
def test_quantized_rows_are_bit_identical_alone_and_batched(ckpt_dirs, mode):
    """Stronger than tokens: one window's logits alone equal its logits packed beside others."""
    eng = make_engine(ckpt_dirs["llama"], quantization=mode, dtype="bf16")
    x = torch.randn(40, eng.spec.hidden_size, generator=torch.Generator().manual_seed(0)).bfloat16()
    for layer in eng.model.layers[:1]:
        for name in ("qkv", "o", "gate_up"):
            lin = layer[name]
            whole = lin(x)
            for start, rows in ((0, 1), (3, 4), (7, 16), (11, 29)):
                assert torch.equal(lin(x[start:start + rows]), whole[start:start + rows])


@pytest.mark.parametrize("mode", MODES)
def test_cached_equals_recompute(ckpt_dirs, mode):
    eng = make_engine(ckpt_dirs["dream"], quantization=mode, dtype="bf16")
    for block, tau in ((4, 0.9), (4, 0.3)):
        assert_cached_equals_recompute(eng, [5, 9, 13, 2, 40, 7], block=block, tau_add=0.1, tau_act=0.9,
                                       tau_conf=tau)


@pytest.mark.parametrize("mode,tol", [("int8", 1e-4), ("int4", 1e-4)])
def test_logits_match_the_dequantized_fp32_model(ckpt_dirs, mode, tol):
    """fp32 activations: the quantized kernels compute exactly the dequantized weights' matmul, up to
    fp32 summation order."""
    spec, quant = load_model(ckpt_dirs["qwen2"], torch.float32, quantization=mode)
    _, plain = load_model(ckpt_dirs["qwen2"], torch.float32)
    ref = Decoder(spec, _dequantized(ckpt_dirs["qwen2"], spec, mode))
    mask = block_mask(len(IDS), 5, 4)
    got, want = full_forward(quant, IDS, mask), full_forward(ref, IDS, mask)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert not torch.equal(got, full_forward(plain, IDS, mask))  # it did quantize


def _dequantized(path, spec, mode) -> dict:
    from d2f.engine.models.checkpoint import load_weights
    from d2f.engine.models.quant import quantize

    w = load_weights(path, spec, torch.float32, "cpu")
    for i in range(spec.num_layers):
        for p in ("q", "k", "v", "o", "gate", "up", "down"):
            w[f"layers.{i}.{p}"] = quantize(w[f"layers.{i}.{p}"], mode, 32).dequantize()
    return w


def test_the_embedded_model_serves_its_own_q4_1_blocks(caplog):
    """int4 on the default model: every layer matrix is the GGUF's block data, not a re-quantization."""
    from d2f.engine.models.default_model import ensure_default_model, gguf_path
    from d2f.engine.models.quant import quantized_linear
    from d2f.engine.models.quant_gguf import read_q4_1

    path = ensure_default_model(progress=lambda m: None)
    spec, _ = read_spec(path)
    with caplog.at_level(logging.INFO, logger="d2f.engine"):
        _, model = load_model(path, torch.bfloat16, quantization="int4")
    assert f"{7 * spec.num_layers} of {7 * spec.num_layers} matrices from the checkpoint's own Q4_1 blocks" \
        in caplog.text and "group size 32" in caplog.text
    blocks = read_q4_1(gguf_path())
    x = torch.randn(3, spec.hidden_size, generator=torch.Generator().manual_seed(1)).bfloat16()
    last = spec.num_layers - 1
    for li in (0, last):
        names = [f"model.layers.{li}.self_attn.{p}_proj.weight" for p in "qkv"]
        want = quantized_linear(type(blocks[names[0]]).cat([blocks[n] for n in names]), torch.bfloat16)
        assert torch.equal(model.layers[li]["qkv"](x), want(x))


def test_unknown_quantization_is_refused(ckpt_dirs):
    with pytest.raises(ValueError, match="quantization"):
        make_engine(ckpt_dirs["llama"], quantization="int3")
