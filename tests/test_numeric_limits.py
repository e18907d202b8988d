"""Numeric limits: huge in_features (exact int64 accumulation), NaN/Inf and tiny-range
activation rows (no UB in the quantizer), degenerate shapes (M = 0, nnz = 0, layers
smaller than a block)."""
from __future__ import annotations

import pytest
import torch

import sqfx
from sqfx import reference

from sqfx_testing import assert_same, call_op, call_reference, random_packed

FLT_MIN = torch.finfo(torch.float32).tiny


@pytest.mark.parametrize("block", [(1, 4), (4, 16), (1, 1)])
def test_huge_in_features_accumulates_exactly(block):
    # Worst case for the accumulator: q = 255 everywhere (a constant positive row) times
    # w = 127 everywhere gives K * 255 * 127 = 2.27e9 > 2**31 for K = 70000.
    k, n = 70000, 3
    assert k > 2**31 // (255 * 127)
    weight = torch.ones(n, k)
    weight[1] = -1.0
    weight[2, ::2] = -1.0
    p = sqfx.pack(weight, block=block, bias=torch.tensor([0.5, -0.5, 0.0]))
    x = torch.full((2, k), 3.0)
    x[1, 0] = -3.0
    q, _, zp = reference.quantize_rows(x)
    assert int(q[0].min()) == 255 and int(zp[0]) == 0
    out = call_op(p, x)
    assert_same(out, call_reference(p, x))
    # An int32 wrap would flip the sign and be off by 2**32 * scale; check the magnitude too.
    dense = x @ p.unpack().T + p.bias
    torch.testing.assert_close(out, dense, rtol=1e-2, atol=1e-2 * float(dense.abs().max()))


def test_w_sum_overflow_is_rejected_by_pack():
    k = 2**31 // 127 + 1000
    with pytest.raises(ValueError, match="row sums overflow int32"):
        sqfx.pack(torch.ones(1, k), block=(1, 4096))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("relu", [False, True])
def test_nan_inf_rows_give_nan_rows(bad, relu):
    p = random_packed(9, 33, (4, 8), sparsity=0.3, seed=1)
    x = torch.randn(5, 33)
    x[1, 7] = bad
    x[3, :] = bad
    out = call_op(p, x, relu=relu)
    assert_same(out, call_reference(p, x, relu=relu))
    assert bool(torch.isnan(out[[1, 3]]).all())  # relu keeps NaN
    assert not bool(torch.isnan(out[[0, 2, 4]]).any())


def test_finite_rows_whose_range_overflows_give_nan():
    p = random_packed(6, 8, (1, 4), sparsity=0.0, seed=2)
    x = torch.randn(2, 8)
    x[0, 0], x[0, 1] = 3e38, -3e38  # max - min = inf in fp32
    out = call_op(p, x)
    assert_same(out, call_reference(p, x))
    assert bool(torch.isnan(out[0]).all()) and not bool(torch.isnan(out[1]).any())


@pytest.mark.parametrize("k", [7, 64, 301])
def test_tiny_range_rows_are_defined(k):
    # Rows whose range / 255 underflows: the scale used to become 0 or subnormal, 1/scale
    # Inf and 0 * Inf = NaN reached a float -> int cast (UB). Now the scale is clamped to
    # FLT_MIN; the outputs are finite and equal to the reference.
    p = random_packed(12, k, (4, 4), sparsity=0.2, seed=3)
    rows = [
        torch.zeros(k),
        torch.full((k,), 1e-44),
        torch.full((k,), -1e-44),
        torch.linspace(-1e-40, 1e-40, k),
        torch.full((k,), FLT_MIN),
        torch.linspace(0, 200 * FLT_MIN, k),
        torch.full((k,), -0.0),
        torch.linspace(-3 * FLT_MIN, 1e-45, k),
    ]
    x = torch.stack(rows)
    q, scale, zp = reference.quantize_rows(x)
    assert bool((scale >= FLT_MIN).all()) and bool(torch.isfinite(scale).all())
    assert int(q.min()) >= 0 and int(q.max()) <= 255 and int(zp.min()) >= 0 and int(zp.max()) <= 255
    out = call_op(p, x)
    assert_same(out, call_reference(p, x))
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, p.bias.expand_as(out), rtol=0, atol=1e-30)


def test_all_zero_rows_and_zero_weight_rows():
    p = random_packed(10, 16, (2, 4), sparsity=0.5, seed=4)
    x = torch.randn(4, 16)
    x[2] = 0
    out = call_op(p, x)
    assert_same(out, call_reference(p, x))
    assert torch.equal(out[2], p.bias)


@pytest.mark.parametrize("block", [(1, 4), (4, 4), (16, 1)])
def test_fully_sparse_layer(block):
    w = torch.randn(9, 14)
    p = sqfx.pack(w, mask=torch.zeros(9, 14), block=block, bias=torch.randn(9))
    assert p.nnz_blocks == 0
    p.validate()
    x = torch.randn(3, 14)
    x[1, 0] = float("nan")
    out = call_op(p, x)
    assert_same(out, call_reference(p, x))
    assert torch.equal(out[[0, 2]], p.bias.expand(2, 9))
    assert bool(torch.isnan(out[1]).all())
    p_nobias = sqfx.pack(w, mask=torch.zeros(9, 14), block=block)
    assert torch.equal(call_op(p_nobias, x[[0, 2]]), torch.zeros(2, 9))


@pytest.mark.parametrize("shape", [(0, 12), (2, 0, 12), (0, 0, 12)])
def test_empty_batches(shape):
    p = random_packed(5, 12, (4, 4), seed=5)
    out = call_op(p, torch.randn(shape))
    assert out.shape == (*shape[:-1], 5)


@pytest.mark.parametrize("n,k,block", [
    (5, 3, (1, 4)),      # in_features smaller than a block
    (5, 3, (4, 16)),
    (3, 20, (8, 1)),     # out_features smaller than row_block
    (1, 1, (16, 16)),    # both
    (2, 100, (32, 4)),
])
def test_layers_smaller_than_a_block(n, k, block):
    p = random_packed(n, k, block, sparsity=0.0, seed=6)
    p.validate()
    for x in (torch.randn(4, k), torch.randn(k), torch.randn(2, 3, k)):
        assert_same(call_op(p, x), call_reference(p, x))
        assert_same(call_op(p, x, relu=True), call_reference(p, x, relu=True))


def test_int32_col_idx_for_many_block_columns():
    k = 40000  # > 32767 block columns for cb = 1: pack switches col_idx to int32
    w = torch.zeros(2, k)
    w[0, -1], w[1, 5] = 1.0, -2.0
    p = sqfx.pack(w, block=(1, 1), bias=torch.randn(2))
    assert p.col_idx.dtype == torch.int32 and int(p.col_idx.max()) == k - 1
    x = torch.randn(3, k)
    assert_same(call_op(p, x), call_reference(p, x))
