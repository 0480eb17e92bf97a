"""Weight-only quantized linear layers: int8 per output channel, int4 per group of input features.

The weights live in plain containers (Int8Weights, Int4Weights) that say exactly what each weight is,
w = q * scale (int8) or w = q * scale + min (int4, GGUF Q4_1's d and m), so that a GGUF's blocks can be
held without a second rounding and a test can compare against the exact dequantized values. A layer
(Int8Linear, Int4Linear) packs them once for torch's weight-only kernels and is called like Linear:
x [rows, in] in the model dtype -> [rows, out] in the model dtype.

Why these kernels: on CPU they read 1 or 0.5 bytes per weight instead of 2, and every output row gets
the same bits whatever the number of rows (tests/engine/test_quant.py holds it), so batched == alone
survives quantization.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 kernels accept
_N_MULTIPLE = 16  # the CPU int4 packing works on blocks of 16 output channels
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Int8Weights:
    """w[n, k] = q[n, k] * scale[n]."""
    q: torch.Tensor      # int8 [out, in]
    scale: torch.Tensor  # float [out]

    def __post_init__(self):
        if self.q.dtype != torch.int8 or self.q.dim() != 2:
            raise ValueError(f"int8 weights: q must be a 2-D int8 tensor, got {self.q.dtype} {tuple(self.q.shape)}")
        if tuple(self.scale.shape) != (self.q.shape[0],):
            raise ValueError(f"int8 weights: scale must have shape ({self.q.shape[0]},), got {tuple(self.scale.shape)}")

    def dequantize(self) -> torch.Tensor:
        return self.q.float() * self.scale.float()[:, None]

    @staticmethod
    def cat(parts: list[Int8Weights]) -> Int8Weights:
        """Stack along output channels (fused q|k|v, gate|up)."""
        return Int8Weights(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]))


@dataclass
class Int4Weights:
    """w[n, k] = q[n, k] * scale[n, g] + min[n, g] with g = k // group_size and q in 0..15.

    q is held two per byte (q4[n, j] = q[n, 2j] | q[n, 2j + 1] << 4), so no value can leave 0..15 and
    the container is as small as the file it is saved to. GGUF Q4_1 is exactly this with group_size 32,
    scale = d and min = m (both fp16).
    """
    q4: torch.Tensor     # uint8 [out, in / 2]
    scale: torch.Tensor  # float [out, in / group_size]
    min: torch.Tensor    # float [out, in / group_size]
    group_size: int

    def __post_init__(self):
        if self.q4.dtype != torch.uint8 or self.q4.dim() != 2:
            raise ValueError(f"int4 weights: q4 must be a 2-D uint8 tensor, got {self.q4.dtype} {tuple(self.q4.shape)}")
        out, inp = self.q4.shape[0], 2 * self.q4.shape[1]
        if self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {self.group_size}")
        if inp % self.group_size:
            raise ValueError(f"int4 weights: in-features {inp} is not a multiple of the group size {self.group_size}")
        groups = (out, inp // self.group_size)
        if tuple(self.scale.shape) != groups or tuple(self.min.shape) != groups:
            raise ValueError(f"int4 weights: scale and min must have shape {groups}, "
                             f"got {tuple(self.scale.shape)} and {tuple(self.min.shape)}")

    @staticmethod
    def from_q(q: torch.Tensor, scale: torch.Tensor, min: torch.Tensor, group_size: int) -> Int4Weights:
        """From one value 0..15 per element of q [out, in]."""
        in_range = q.numel() == 0 or 0 <= int(q.min()) <= int(q.max()) <= 15
        if q.dim() != 2 or q.shape[1] % 2 or q.is_floating_point() or not in_range:
            raise ValueError(f"int4 weights: q must be 2-D integers in 0..15 with an even number of columns, "
                             f"got {q.dtype} {tuple(q.shape)}")
        q = q.to(torch.uint8)
        return Int4Weights(q[:, 0::2] | q[:, 1::2] << 4, scale, min, group_size)

    @property
    def q(self) -> torch.Tensor:
        """uint8 [out, in], one value per byte."""
        return torch.stack([self.q4 & 15, self.q4 >> 4], dim=-1).reshape(self.q4.shape[0], -1)

    def dequantize(self) -> torch.Tensor:
        """fp32 [out, in]: q * scale + min with one rounding, as gguf's own dequantizer computes it."""
        g = self.group_size
        return (self.q.float() * self.scale.float().repeat_interleave(g, 1)
                + self.min.float().repeat_interleave(g, 1))

    def rows(self, index: torch.Tensor) -> Int4Weights:
        """The rows `index` (whole groups move with their row)."""
        return Int4Weights(self.q4[index], self.scale[index], self.min[index], self.group_size)

    @staticmethod
    def cat(parts: list[Int4Weights]) -> Int4Weights:
        """Stack along output channels (fused q|k|v, gate|up)."""
        sizes = {p.group_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"cannot fuse int4 weights of different group sizes {sorted(sizes)}")
        return Int4Weights(torch.cat([p.q4 for p in parts]), torch.cat([p.scale for p in parts]),
                           torch.cat([p.min for p in parts]), sizes.pop())


def quantize(weight: torch.Tensor, mode: str, group_size: int = 32) -> Int8Weights | Int4Weights:
    """Round to nearest from a float weight [out, in]: "int8" symmetric per output channel (q in -127..127),
    "int4" affine per group of `group_size` input features (each group's min and max are exact ends)."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"quantize: expected a 2-D float weight, got {weight.dtype} {tuple(weight.shape)}")
    w = weight.float()
    if mode == "int8":
        scale = w.abs().amax(dim=1) / 127
        q = torch.where(scale[:, None] > 0, w / scale[:, None].clamp_min(1e-30), 0).round().clamp(-127, 127)
        return Int8Weights(q.to(torch.int8), scale)
    if mode != "int4":
        raise ValueError(f"quantize: mode must be 'int8' or 'int4', got {mode!r}")
    out, inp = w.shape
    if group_size not in INT4_GROUP_SIZES or inp % group_size:
        raise ValueError(f"quantize: int4 needs a group size in {INT4_GROUP_SIZES} that divides "
                         f"in-features {inp}, got {group_size}")
    groups = w.reshape(out, inp // group_size, group_size)
    lo, hi = groups.amin(dim=2), groups.amax(dim=2)
    scale = (hi - lo) / 15
    q = torch.where(scale[..., None] > 0, (groups - lo[..., None]) / scale[..., None].clamp_min(1e-30), 0)
    return Int4Weights.from_q(q.round().clamp(0, 15).to(torch.uint8).reshape(out, inp), scale, lo, group_size)


class Int8Linear:
    """y = x @ (q * scale).T + b via aten._weight_int8pack_mm (CPU; on CUDA the same op, unverified on GPU)."""
    __slots__ = ("q", "scale", "bias", "in_features", "out_features")

    def __init__(self, weights: Int8Weights, dtype: torch.dtype, bias: torch.Tensor | None = None,
                 device: str | torch.device = "cpu"):
        device = torch.device(device)
        _check_dtype("int8", dtype, device, _CPU_DTYPES)
        self.out_features, self.in_features = weights.q.shape
        self.q = weights.q.to(device).contiguous()
        self.scale = weights.scale.to(device=device, dtype=dtype)  # the kernel wants the activation dtype
        self.bias = _check_bias(bias, self.out_features, dtype, device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _rows(x, self.in_features, self.scale.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.q, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    @property
    def row_invariant(self) -> bool:
        return self.q.device.type == "cpu"  # measured on CPU only

    @property
    def weight_bytes(self) -> int:
        return _nbytes(self.q, self.scale, self.bias)


class Int4Linear:
    """y = x @ W.T + b with W = q * scale + min per group, via torch's int4 weight-only kernels.

    torch's kernels compute (q - 8) * s + z with s and z in the activation dtype (per group, [in/g, out, 2]),
    so s = scale and z = min + 8 * scale. With fp32 activations s and z hold GGUF Q4_1's fp16 d and m
    exactly (d is exact; m + 8d is exact in fp32 for every block of the default model, and the kernel's
    fma then gives q * d + m with the single rounding gguf's dequantizer has). With bf16 activations d and
    m + 8d are rounded to bf16 (8 significant bits): over all Q4_1 matrices of the default model that moves
    a weight by at most 0.0215 (0.41% of its row's largest |w|), against 0.0137 for rounding the
    dequantized weights themselves to bf16. scale_dtype=torch.float32 keeps them exact (the kernel then
    runs on fp32 activations and the layer returns the model dtype), but on CPU (torch 2.13) only the bf16
    kernel is vectorized: fp32 and fp16 run 70-180x slower, a reference aid, not a serving path.
    """
    __slots__ = ("packed", "scale_zero", "group_size", "bias", "in_features", "out_features", "dtype", "cuda")

    def __init__(self, weights: Int4Weights, dtype: torch.dtype, bias: torch.Tensor | None = None,
                 device: str | torch.device = "cpu", scale_dtype: torch.dtype | None = None):
        device = torch.device(device)
        scale_dtype = scale_dtype or dtype
        _check_dtype("int4", dtype, device, _CPU_DTYPES)
        self.cuda = device.type == "cuda"
        if self.cuda and scale_dtype != torch.bfloat16:
            raise ValueError("int4 on CUDA: torch's kernel takes bf16 activations and scales only")
        self.out_features, self.in_features = weights.q4.shape[0], 2 * weights.q4.shape[1]
        if self.out_features % _N_MULTIPLE:
            raise ValueError(f"int4: out-features {self.out_features} must be a multiple of {_N_MULTIPLE}")
        self.dtype, self.group_size = dtype, weights.group_size
        scale = weights.scale.double()
        zero = weights.min.double() + 8 * scale
        self.scale_zero = torch.stack([scale, zero], dim=2).transpose(0, 1).to(device=device, dtype=scale_dtype)
        self.scale_zero = self.scale_zero.contiguous()
        if self.cuda:  # unverified on GPU: CUDA packs two values per byte, even column in the high nibble
            q4 = weights.q4.to(device)
            self.packed = torch.ops.aten._convert_weight_to_int4pack(((q4 & 15) << 4 | q4 >> 4).contiguous(),
                                                                     cuda_inner_k_tiles(self.in_features))
        elif device.type == "cpu":
            self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weights.q.to(torch.int32), 1)
        else:
            raise ValueError(f"int4: no torch kernel for device {device.type!r} here (cpu; cuda unverified)")
        self.bias = _check_bias(bias, self.out_features, dtype, device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _rows(x, self.in_features, self.dtype)
        exact_scales = self.scale_zero.dtype != self.dtype
        if exact_scales:
            x2 = x2.to(self.scale_zero.dtype)
        if self.cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scale_zero)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scale_zero)
        if exact_scales:
            y = y.to(self.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    @property
    def row_invariant(self) -> bool:
        return not self.cuda  # measured on CPU only

    @property
    def weight_bytes(self) -> int:
        return _nbytes(self.packed, self.scale_zero, self.bias)


def cuda_inner_k_tiles(in_features: int) -> int:
    """The CUDA int4 packing groups 2, 4 or 8 k-tiles of 16 and refuses in-features that are not a whole
    number of such groups: 8 (the widest loads) would refuse SmolLM2's 576 = 4.5 x 128. In-features are a
    multiple of the group size (>= 32), so 2 always fits."""
    return next(t for t in (8, 4, 2) if in_features % (16 * t) == 0)


def quantized_linear(weights: Int8Weights | Int4Weights, dtype: torch.dtype, bias: torch.Tensor | None = None,
                     device: str | torch.device = "cpu", **kwargs) -> Int8Linear | Int4Linear:
    if isinstance(weights, Int4Weights):
        return Int4Linear(weights, dtype, bias, device, **kwargs)
    if isinstance(weights, Int8Weights):
        return Int8Linear(weights, dtype, bias, device)
    raise TypeError(f"quantized_linear: expected Int8Weights or Int4Weights, got {type(weights).__name__}")


def _check_dtype(kind: str, dtype: torch.dtype, device: torch.device, allowed) -> None:
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{kind}: no torch kernel for device {device.type!r} here (cpu; cuda unverified)")
    if dtype not in allowed:
        raise ValueError(f"{kind}: activations must be one of {[str(d) for d in allowed]}, got {dtype}")


def _check_bias(bias, out_features: int, dtype, device):
    if bias is None:
        return None
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
    return bias.to(device=device, dtype=dtype)


def _rows(x: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    if x.shape[-1] != in_features or x.dtype != dtype:
        raise ValueError(f"expected input [..., {in_features}] in {dtype}, got {tuple(x.shape)} in {x.dtype}")
    # Each skipped no-op still costs a dispatch, and a decode step makes 120 of these calls.
    x2 = x if x.dim() == 2 else x.reshape(-1, in_features)
    return x2 if x2.is_contiguous() else x2.contiguous()


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)
