"""Both ops take float16 / bfloat16 activations (issue 12, bug 5): they compute in float32, so
the result is exactly the float32 call on the upcast input, rounded to the input's dtype."""
import pytest
import torch

import sqfx


def _packed(n=24, k=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, -(-k // 4), generator=g) < 0.5
    return sqfx.pack(torch.randn(n, k, generator=g), mask=mask, block=(1, 4), bias=torch.randn(n, generator=g))


def _dynamic(p, x, relu):
    return torch.ops.sqfx.qlinear_dynamic(x, *p.tensors(), p.in_features, relu)


def _weight_only(p, x, relu):
    return torch.ops.sqfx.qlinear_weight_only(x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias,
                                              p.in_features, relu)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", [_dynamic, _weight_only])
@pytest.mark.parametrize("m", [1, 5, 70])  # small-M tiles, row kernels and the GEMM rows
@pytest.mark.parametrize("relu", [False, True])
def test_half_input_is_the_float32_call_rounded(dtype, op, m, relu):
    p = _packed()
    x = (torch.randn(m, 40) * 3).to(dtype)
    got = op(p, x, relu)
    assert got.dtype == dtype and got.shape == (m, 24)
    assert torch.equal(got, op(p, x.float(), relu).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_matches_the_reference_and_opchecks(dtype):
    p = _packed(seed=1)
    x = torch.randn(2, 3, 40).to(dtype)
    assert torch.equal(_dynamic(p, x, False),
                       sqfx.reference.qlinear_dynamic(x, *p.tensors(), p.in_features, False))
    torch.library.opcheck(torch.ops.sqfx.qlinear_dynamic.default, (x, *p.tensors(), p.in_features, True))
    torch.library.opcheck(torch.ops.sqfx.qlinear_weight_only.default,
                          (x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias, p.in_features, False))


def test_half_input_traces_with_its_dtype():
    p = _packed(seed=2)
    x = torch.randn(4, 40, dtype=torch.bfloat16)
    fn = torch.compile(lambda x: _dynamic(p, x, True), fullgraph=True)
    assert torch.equal(fn(x), _dynamic(p, x, True))


def test_other_dtypes_are_refused():
    p = _packed()
    for x in (torch.randn(2, 40, dtype=torch.float64), torch.ones(2, 40, dtype=torch.int32)):
        for op in (_dynamic, _weight_only):
            with pytest.raises(RuntimeError, match="input must be float32, float16 or bfloat16"):
                op(p, x, False)
