"""The C++ op against the plain-PyTorch reference: bit-identical outputs."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sqfx
from sqfx_testing import call_op, call_reference, random_packed

BLOCKS = [(1, 4), (8, 1), (4, 4), (1, 1), (16, 1)]


@given(
    n=st.integers(1, 70),
    k=st.integers(1, 90),
    m=st.integers(0, 9),
    block=st.sampled_from(BLOCKS),
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]),
    per_channel=st.booleans(),
    bias=st.booleans(),
    relu=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_op_equals_reference(n, k, m, block, sparsity, per_channel, bias, relu, seed):
    packed = random_packed(n, k, block, sparsity, per_channel, bias, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 3
    assert torch.equal(call_op(packed, x, relu), call_reference(packed, x, relu))


@pytest.mark.parametrize("shape", [(5,), (2, 5), (2, 3, 5), (1, 2, 3, 5)])
def test_leading_dims(shape):
    packed = random_packed(6, 5, (1, 4), 0.3)
    x = torch.randn(*shape)
    y = call_op(packed, x)
    assert y.shape == (*shape[:-1], 6)
    assert torch.equal(y, call_reference(packed, x))


def test_close_to_fp32_masked_linear():
    packed = random_packed(64, 96, (1, 4), 0.5)
    dense = packed.unpack()
    x = torch.randn(16, 96)
    y = call_op(packed, x)
    ref = torch.nn.functional.linear(x, dense, packed.bias)
    # Error bound of per-row uint8 activations: |x - dq(x)| <= scale/2 per element.
    a_scale = (x.amax(1).clamp(min=0) - x.amin(1).clamp(max=0)) / 255
    bound = 0.5 * a_scale[:, None] * dense.abs().sum(1)[None, :] + 1e-4
    assert bool(((y - ref).abs() <= bound).all())


def test_no_int16_saturation():
    # All activations quantize to 255 (zp 0) and weights are +-127: every pair of products
    # is 2 * 255 * 127 = 64770 > 32767, where AVX2's vpmaddubsw would saturate.
    k = 256
    w = torch.full((8, k), 1.0)
    w[1] = -1.0
    w[2, ::2] = -1.0
    packed = sqfx.pack(w, block=(1, 4))
    x = torch.ones(3, k)
    y = call_op(packed, x)
    assert torch.equal(y, call_reference(packed, x))
    acc, _ = sqfx.reference.accumulators(x, *packed.tensors()[:3], packed.w_sum, 8, k)
    assert acc[0, 0] == 255 * 127 * k and acc[0, 1] == -255 * 127 * k
    torch.testing.assert_close(y[:, 0], torch.full((3,), float(k)), rtol=1e-6, atol=0)


def test_relu_fused():
    packed = random_packed(32, 32, (1, 4), 0.0)
    x = torch.randn(4, 32)
    assert torch.equal(call_op(packed, x, relu=True), torch.relu(call_op(packed, x)))


def test_nan_and_inf_rows_give_nan():
    packed = random_packed(8, 12, (1, 4), 0.0)
    x = torch.randn(3, 12)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    y = call_op(packed, x)
    assert torch.equal(y.isnan(), call_reference(packed, x).isnan())
    assert bool(y[1:].isnan().all()) and bool(y[0].isfinite().all())


def test_all_zero_input_gives_bias():
    packed = random_packed(8, 12, (1, 4), 0.5)
    y = call_op(packed, torch.zeros(2, 12))
    assert torch.equal(y, packed.bias.expand(2, 8))


def test_empty_batch():
    packed = random_packed(8, 12)
    y = call_op(packed, torch.empty(0, 3, 12))
    assert y.shape == (0, 3, 8)


def test_non_contiguous_input():
    packed = random_packed(8, 12)
    x = torch.randn(12, 5).t()
    assert not x.is_contiguous()
    assert torch.equal(call_op(packed, x), call_op(packed, x.contiguous()))


def test_fully_sparse_layer_gives_bias():
    packed = random_packed(8, 12, (1, 4), 1.0)
    assert packed.nnz_blocks == 0
    y = call_op(packed, torch.randn(3, 12))
    assert torch.equal(y, packed.bias.expand(3, 8))


@pytest.mark.parametrize("shape", [(7,), (3, 7), (2, 3, 7)])
@pytest.mark.parametrize("relu", [False, True])
def test_opcheck(shape, relu):
    packed = random_packed(10, 7, (1, 4), 0.3)
    x = torch.randn(*shape)
    torch.library.opcheck(torch.ops.sqfx.qlinear_dynamic.default,
                          (x, *packed.tensors(), packed.in_features, relu))


def test_opcheck_without_bias_and_int32_indices():
    packed = random_packed(9, 13, (8, 1), 0.5, bias=False)
    packed.col_idx = packed.col_idx.int()
    x = torch.randn(4, 13)
    torch.library.opcheck(torch.ops.sqfx.qlinear_dynamic.default,
                          (x, *packed.tensors(), packed.in_features, False))
    assert torch.equal(call_op(packed, x), call_reference(packed, x))


def test_backward_raises():
    packed = random_packed(8, 12)
    x = torch.randn(2, 12, requires_grad=True)
    y = call_op(packed, x)
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()


def test_threads_give_identical_results():
    packed = random_packed(256, 512, (1, 4), 0.8)
    x = torch.randn(33, 512)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1 = call_op(packed, x)
        torch.set_num_threads(2)
        y2 = call_op(packed, x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y1, y2)
