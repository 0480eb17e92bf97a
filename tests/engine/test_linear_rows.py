"""The prepacked Linear gives a row the same bits whatever the number of rows, 1 included, at the default
model's shapes (oneDNN reduced a lone row over 1536 in-features in another order: AR alone then differed
from AR batched, and from exact mode, in fp32 and bf16)."""
import pytest
import torch

from d2f.engine.models.linear import Linear, onednn_supported


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(576, 1536), (1536, 576), (64, 96)])
def test_a_row_has_the_same_bits_alone_and_in_any_batch(dtype, shape):
    if not onednn_supported(dtype, "cpu"):
        pytest.skip(f"no oneDNN {dtype} on this CPU: F.linear, padded by the runner instead")
    g = torch.Generator().manual_seed(0)
    lin = Linear((torch.randn(shape, generator=g) * 0.05).to(dtype))
    x = torch.randn(40, shape[1], generator=g).to(dtype)
    assert lin.row_invariant
    batch = lin(x)
    for i in (0, 7, 39):
        assert torch.equal(lin(x[i:i + 1]), batch[i:i + 1])
    for m in (2, 3, 8, 17):
        assert torch.equal(lin(x[:m]), batch[:m])
