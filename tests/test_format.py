"""sqfx.pack / PackedLinear: the packed format's invariants, masks and round trips."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sqfx
from sqfx.format import PackedFormatError
from sqfx_testing import random_block_mask, random_packed


@given(n=st.integers(1, 40), k=st.integers(1, 40),
       block=st.sampled_from([(1, 4), (8, 1), (4, 4), (1, 1), (16, 1), (3, 5)]),
       sparsity=st.sampled_from([0.0, 0.5, 0.95, 1.0]), per_channel=st.booleans())
def test_pack_unpack_roundtrip(n, k, block, sparsity, per_channel):
    packed, weight, mask = random_packed(n, k, block, sparsity, per_channel, return_parts=True)
    packed.validate()
    assert torch.equal(packed.block_mask(), mask)
    element_mask = mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:n, :k]
    masked = weight * element_mask
    dense = packed.unpack()
    assert bool((dense[~element_mask] == 0).all())
    # Symmetric rounding error is at most half a step per weight.
    step = packed.w_scale[:, None].expand(n, k)
    assert bool(((dense - masked).abs() <= step / 2 + 1e-6).all())
    assert packed.nnz_blocks == int(mask.sum())
    assert packed.sparsity == pytest.approx(1 - mask.float().mean().item())


def test_per_tensor_scales_are_equal():
    packed = random_packed(16, 16, per_channel=False)
    assert bool((packed.w_scale == packed.w_scale[0]).all())
    assert packed.scheme == "per_tensor"


def test_element_mask_must_be_block_structured():
    w = torch.randn(8, 8)
    mask = torch.ones(8, 8)
    mask[0, 1] = 0
    with pytest.raises(ValueError, match="not block-structured for block 1x4"):
        sqfx.pack(w, mask=mask, block=(1, 4))


def test_element_mask_with_partial_edge_blocks():
    w = torch.randn(5, 6)
    block_mask = torch.tensor([[1, 0]] * 5, dtype=torch.bool)
    element = block_mask.repeat_interleave(4, 1)[:, :6]
    packed = sqfx.pack(w, mask=element, block=(1, 4))
    assert torch.equal(packed.block_mask(), block_mask)


def test_mask_wrong_shape():
    with pytest.raises(ValueError, match="mask for weight has shape"):
        sqfx.pack(torch.randn(8, 8), mask=torch.ones(3, 3), block=(1, 4))


def test_no_mask_keeps_nonzero_blocks():
    w = torch.zeros(4, 8)
    w[1, 5] = 1.0
    packed = sqfx.pack(w, block=(1, 4))
    assert packed.nnz_blocks == 1 and packed.block_mask()[1, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weight_rejected(bad):
    w = torch.randn(4, 4)
    w[2, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        sqfx.pack(w)


@pytest.mark.parametrize("block", [(0, 4), (1, -1), (1,), "1x4"])
def test_bad_block(block):
    with pytest.raises(ValueError, match="block"):
        sqfx.pack(torch.randn(4, 4), block=block)


def test_weight_must_be_2d_float():
    with pytest.raises(ValueError, match="2-D"):
        sqfx.pack(torch.randn(4))
    with pytest.raises(ValueError, match="floating point"):
        sqfx.pack(torch.ones(4, 4, dtype=torch.int32))


def test_int16_indices_when_they_fit():
    packed = random_packed(4, 64)
    assert packed.col_idx.dtype == torch.int16


@pytest.mark.parametrize(
    "field,corrupt,match",
    [
        ("col_idx", lambda t: t.flip(0).contiguous(), "strictly increasing|outside"),
        ("row_ptr", lambda t: t + 1, "start at 0"),
        ("w_scale", lambda t: -t, "finite and positive"),
        ("w_sum", lambda t: t + 1, "row sums"),
        ("values", lambda t: torch.full_like(t, -128), r"\[-127, 127\]"),
    ],
)
def test_validate_names_the_violation(field, corrupt, match):
    packed = random_packed(8, 16, (1, 4), 0.3)
    setattr(packed, field, corrupt(getattr(packed, field)))
    with pytest.raises(PackedFormatError, match=match):
        packed.validate()


def test_validate_rejects_nonzero_padding():
    packed = random_packed(3, 6, (1, 4), 0.0)
    packed.values[1, 0, 3] = 5  # column 7 does not exist
    with pytest.raises(PackedFormatError, match="padding"):
        packed.validate()


def test_pack_4096_square_is_fast_enough_to_use():
    mask = random_block_mask(4096, 4096, (1, 4), 0.9)
    packed = sqfx.pack(torch.randn(4096, 4096), mask=mask)
    assert packed.nnz_blocks == int(mask.sum())
