"""Linear layers: oneDNN prepacked weights on CPU where the CPU supports the dtype, F.linear elsewhere.

Why oneDNN on CPU: its prepacked kernels give every row the same bits whatever the number of
rows from 2 up (so a request's answer cannot depend on its batch; a lone row is padded to two) and are faster than F.linear for the
1-32 row windows a decoder runs (measured 1.5-2.7x on a 2-core AVX2 machine). F.linear on CPU
picks different kernels for 1-7 rows than for 8+, so that path pads row counts (see runner).
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=None)
def onednn_supported(dtype: torch.dtype, device_type: str) -> bool:
    if device_type != "cpu" or os.environ.get("D2F_LINEAR", "auto") == "torch":
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    try:  # bf16 needs avx512/avx_ne_convert; asking is the only reliable test
        w = torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 1)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(1, 8, dtype=dtype), w, None, "none", [], "")
        return True
    except (RuntimeError, AttributeError):
        return False


class Linear:
    """y = x @ W.T + b with the weight prepacked once at load."""
    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.bias = bias
        if onednn_supported(weight.dtype, weight.device.type):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 16)
            self.weight = None  # the packed copy replaces it
        else:
            self.packed = None
            self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            if x.dim() == 2 and x.shape[0] == 1:
                # oneDNN reduces a lone row in another order than 2 or more rows (seen at 1536 in-features,
                # fp32 and bf16), so a lone row is computed as one of two: same bits as in any batch.
                return torch.ops.mkldnn._linear_pointwise(torch.cat([x, torch.zeros_like(x)]), self.packed,
                                                          self.bias, "none", [], "")[:1]
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    @property
    def row_invariant(self) -> bool:
        return self.packed is not None
