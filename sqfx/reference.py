"""Plain-PyTorch twin of `sqfx::qlinear_dynamic`, the oracle for every kernel.

Same integer semantics as the C++ op: activations quantized per row to uint8 with a zero
point, exact integer accumulation, then `float(acc) * (a_scale * w_scale) + bias`, ReLU.
Every float step is one IEEE float32 operation, so the C++ op matches bit for bit.
"""
from __future__ import annotations

import torch

from .format import dense_int8  # decoding the BSR layout belongs to the format

_INV_255 = torch.tensor(1.0 / 255.0, dtype=torch.float32)
_FLT_MIN = torch.finfo(torch.float32).tiny


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantizes each row of a 2-D float32 tensor to uint8.

    Returns (q as int32 [M, K], scale float32 [M], zero_point int32 [M]). The range of
    each row is widened to hold 0; a row holding NaN/Inf gets scale NaN and q = zp = 0,
    so its outputs are NaN, as an fp32 linear's would be.
    """
    x = x.float()
    mn = x.amin(dim=1).clamp(max=0.0) if x.shape[1] else x.new_zeros(x.shape[0])
    mx = x.amax(dim=1).clamp(min=0.0) if x.shape[1] else x.new_zeros(x.shape[0])
    rng = mx - mn
    finite = torch.isfinite(x).all(dim=1) & torch.isfinite(rng)
    # Clamped to the smallest normal float so 1 / scale stays finite for tiny ranges
    # (as the C++ quantizer does: otherwise 0 * Inf = NaN reaches the int cast).
    scale = torch.where(rng > 0, (rng * _INV_255).clamp(min=_FLT_MIN), torch.ones_like(rng))
    inv = 1.0 / scale
    zp = torch.round(-mn * inv).clamp(0, 255)
    q = (torch.round(x * inv[:, None]) + zp[:, None]).clamp(0, 255)
    q = torch.where(finite[:, None], q, torch.zeros_like(q)).to(torch.int32)
    zp = torch.where(finite, zp, torch.zeros_like(zp)).to(torch.int32)
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    return q, scale, zp


def accumulators(x2d, values, row_ptr, col_idx, w_sum, out_features, in_features):
    """Exact integer accumulators sum_k (q - zp) * w (int64), and the activation scales."""
    q, a_scale, zp = quantize_rows(x2d)
    w = dense_int8(values, row_ptr, col_idx, out_features, in_features)
    # float64 is exact here: every partial sum is an integer below 2**53 (K < 2**37).
    acc = (q.double() @ w.double().T).round().long()
    acc = acc - zp.long()[:, None] * w_sum.long()[None, :]
    return acc, a_scale


def qlinear_dynamic(input, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu=False):
    """Reference for `torch.ops.sqfx.qlinear_dynamic` (same arguments)."""
    out_features = w_scale.shape[0]
    x2d = input.reshape(-1, in_features).float()
    acc, a_scale = accumulators(x2d, values, row_ptr, col_idx, w_sum, out_features, in_features)
    y = acc.float() * (a_scale[:, None] * w_scale[None, :])
    if bias is not None:
        y = y + bias
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)
    return y.reshape(*input.shape[:-1], out_features).to(input.dtype)


def qlinear_weight_only(input, values, row_ptr, col_idx, w_scale, bias, in_features, relu=False):
    """Reference for `torch.ops.sqfx.qlinear_weight_only` (same arguments).

    y = (x @ float(w_int8).T) * w_scale + bias in float32. The C++ kernels sum per block in
    another order (and with FMA on AVX2), so they match this within float32 rounding
    (tests: rtol 1e-5 relative to sum |x| |w|), not bit for bit as qlinear_dynamic does.
    """
    out_features = w_scale.shape[0]
    x2d = input.reshape(-1, in_features).float()
    w = dense_int8(values, row_ptr, col_idx, out_features, in_features).float()
    y = (x2d @ w.T) * w_scale[None, :]
    if bias is not None:
        y = y + bias
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)
    return y.reshape(*input.shape[:-1], out_features).to(input.dtype)
