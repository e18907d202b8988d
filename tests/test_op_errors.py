"""Bad arguments to the op give clear Python errors, never a crash."""
import pytest
import torch

from helpers import call_op, random_packed


def _args(packed, x, relu=False):
    return [x, *packed.tensors(), packed.in_features, relu]


@pytest.fixture
def packed():
    return random_packed(8, 12, (1, 4), 0.5)[0]


def test_wrong_in_features(packed):
    with pytest.raises(RuntimeError, match="in_features = 12"):
        call_op(packed, torch.randn(2, 11))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int32])
def test_wrong_input_dtype(packed, dtype):
    with pytest.raises(RuntimeError, match="input must be float32"):
        call_op(packed, torch.ones(2, 12, dtype=dtype))


def test_scalar_input(packed):
    with pytest.raises(RuntimeError, match="at least 1 dim"):
        torch.ops.sqfx.qlinear_dynamic(torch.tensor(1.0), *packed.tensors(), 12, False)


@pytest.mark.parametrize(
    "index,bad,match",
    [
        (1, lambda t: t.float(), "values must have dtype"),
        (1, lambda t: t.reshape(-1), "values must be 3-D"),
        (2, lambda t: t[:-1].contiguous(), "row_ptr has"),
        (2, lambda t: t.flip(0).contiguous(), "row_ptr"),
        (2, lambda t: t.long(), "row_ptr must have dtype"),
        (3, lambda t: t[:-1].contiguous(), "col_idx has"),
        (3, lambda t: t.float(), "col_idx must be int16 or int32"),
        (3, lambda t: torch.full_like(t, 3), "block column index outside"),
        (3, lambda t: torch.full_like(t, -1), "block column index outside"),
        (4, lambda t: t[:-1].contiguous(), "w_sum has|row_ptr has"),
        (5, lambda t: t[:-1].contiguous(), "w_sum has"),
        (6, lambda t: t[:-1].contiguous(), "bias has"),
        (6, lambda t: t.double(), "bias must have dtype"),
    ],
)
def test_corrupt_packed_tensors(packed, index, bad, match):
    args = _args(packed, torch.randn(2, 12))
    args[index] = bad(args[index])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.sqfx.qlinear_dynamic(*args)


def test_row_ptr_past_nnz(packed):
    args = _args(packed, torch.randn(2, 12))
    rp = args[2].clone()
    rp[-1] += 1
    args[2] = rp
    with pytest.raises(RuntimeError, match="row_ptr"):
        torch.ops.sqfx.qlinear_dynamic(*args)


def test_non_contiguous_packed_tensor_rejected(packed):
    args = _args(packed, torch.randn(2, 12))
    args[4] = torch.stack([args[4], args[4]], 1)[:, 0]
    with pytest.raises(RuntimeError, match="w_scale must be contiguous"):
        torch.ops.sqfx.qlinear_dynamic(*args)


def test_non_positive_in_features(packed):
    with pytest.raises(RuntimeError):
        torch.ops.sqfx.qlinear_dynamic(torch.randn(2, 0), *packed.tensors(), 0, False)
