"""sqfx::qlinear_weight_only (fp32 activations x int8 block-sparse weights) vs its reference twin,
on both kernels (portable, AVX2/FMA), plus validation, opcheck, the module mode and export."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqfx
from sqfx_testing import random_packed


def call_wo(packed, x, relu=False):
    return torch.ops.sqfx.qlinear_weight_only(x, packed.values, packed.row_ptr, packed.col_idx, packed.w_scale,
                                              packed.bias, packed.in_features, relu)


def reference_wo(packed, x, relu=False):
    return sqfx.reference.qlinear_weight_only(x, packed.values, packed.row_ptr, packed.col_idx, packed.w_scale,
                                              packed.bias, packed.in_features, relu)


def assert_close_to_reference(packed, x, relu):
    got, want = call_wo(packed, x, relu), reference_wo(packed, x, relu)
    assert got.shape == want.shape and got.dtype == torch.float32
    # Only the summation order differs: bound the error by the sum of |terms|.
    w = packed.unpack()
    mag = x.reshape(-1, packed.in_features).abs() @ w.abs().T
    if packed.bias is not None:
        mag = mag + packed.bias.abs()
    tol = 1e-5 * mag.reshape(want.shape) + 1e-6
    assert bool(((got - want).abs() <= tol).all()), float(((got - want).abs() - tol).max())


@pytest.fixture(params=sqfx.ops.available_isas())
def kernel(request):
    """Every ISA path this CPU has (sqfx.ops.force_isa reaches the weight-only kernels too)."""
    with sqfx.ops.force_isa(request.param):
        yield request.param


# The kernel fixture forces one ISA for the whole test, the same for every generated input.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 40), k=st.integers(1, 70), m=st.integers(0, 9),
    block=st.sampled_from([(1, 1), (1, 4), (1, 8), (1, 16), (2, 4), (4, 4), (8, 1), (3, 5), (1, 12)]),
    sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]), bias=st.booleans(), relu=st.booleans(),
    per_channel=st.booleans(), seed=st.integers(0, 2**16),
)
def test_matches_reference(kernel, n, k, m, block, sparsity, bias, relu, per_channel, seed):
    packed = random_packed(n, k, block, sparsity, per_channel=per_channel, bias=bias, seed=seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3
    assert_close_to_reference(packed, x, relu)


# Every tiled kernel: rowdot (every block stored, M < 8), fp32 panel (dense-ish, M >= 8), transposed
# bsr (sparse, M >= 16), with ragged M, N and K tails against the tiles' 3/6/12 rows, 4/16/32
# output rows and 8/16 lanes; the dense layout too.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None)
@given(
    n=st.integers(1, 70), k=st.integers(1, 90), m=st.sampled_from([1, 2, 3, 5, 7, 13, 16, 17, 40, 63, 64, 65, 130, 257]),
    block=st.sampled_from([(1, 4), (1, 4), (1, 8), (2, 4), (4, 1), (3, 5), (1, 16)]),
    sparsity=st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95]), layout=st.sampled_from(["sparse", "dense"]),
    bias=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**16),
)
def test_tiled_kernels_match_reference(kernel, n, k, m, block, sparsity, layout, bias, relu, seed):
    if layout == "dense":  # every weight stored, as one 1 x K_padded block per row
        block, sparsity = (1, 4), 0.0
    packed = random_packed(n, k, block, sparsity, bias=bias, seed=seed, layout=layout)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 3
    assert_close_to_reference(packed, x, relu)


@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_rowdot_blocks_of_input_rows(kernel, sparsity):
    # Long rows: the rowdot kernel splits the input rows into blocks (kRowdotBlockBytes,
    # kRowdotMinBlockRows), here of 36 rows, with a ragged last block, and a ragged K against
    # the 16-float vectors.
    packed = random_packed(37, 2003, (1, 4), sparsity, seed=9)
    x = torch.randn(77, 2003, generator=torch.Generator().manual_seed(2))
    for relu in (False, True):
        assert_close_to_reference(packed, x, relu)


@pytest.mark.parametrize("sparsity", [0.0, 0.5])
def test_dense_panel_chunks_of_input_rows(kernel, sparsity):
    # The fp32 panel kernel passes over the input rows in chunks of about 3 MB (kDenseChunkBytes:
    # 392 rows at K = 2003), dequantizing each panel again per chunk; a ragged last chunk, and
    # partly stored rows (0.5) through the int8-row dequantization.
    packed = random_packed(37, 2003, (1, 4), sparsity, seed=10)
    x = torch.randn(800, 2003, generator=torch.Generator().manual_seed(3))
    assert_close_to_reference(packed, x, relu=False)


def test_kernels_agree_and_fit_fp32_linear():
    packed = random_packed(96, 200, (1, 4), 0.7, seed=1)
    x = torch.randn(2, 5, 200)
    auto = call_wo(packed, x)
    with sqfx.ops.force_isa("generic"):
        generic = call_wo(packed, x)
    torch.testing.assert_close(auto, generic, rtol=1e-5, atol=1e-5)
    # Close to the fp32 linear on the same dequantized weight (int8 weight error only).
    want = torch.nn.functional.linear(x, packed.unpack(), packed.bias)
    torch.testing.assert_close(auto, want, rtol=1e-5, atol=1e-4)
    assert auto.shape == (2, 5, 96)


def test_int16_and_int32_col_idx(kernel):
    packed = random_packed(16, 64, (1, 4), 0.5, seed=2)
    x = torch.randn(3, 64)
    a = call_wo(packed, x)
    packed.col_idx = packed.col_idx.to(torch.int32 if packed.col_idx.dtype == torch.int16 else torch.int16)
    torch.testing.assert_close(call_wo(packed, x), a, rtol=0, atol=0)


def test_nan_and_inf_propagate(kernel):
    packed = random_packed(8, 16, (1, 4), 0.0, seed=3)
    x = torch.randn(3, 16)
    x[1, 2] = float("nan")
    y = call_wo(packed, x, relu=True)
    assert bool(y[1].isnan().all()) and bool(y[[0, 2]].isfinite().all())


def assert_same_nonfinite(got, want):
    """Equal NaN and +-Inf positions (and signs), finite entries within the float tolerance."""
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.isposinf(), want.isposinf()) and torch.equal(got.isneginf(), want.isneginf())


@pytest.mark.parametrize("block,sparsity", [((1, 4), 0.5), ((1, 4), 0.9), ((2, 4), 0.7), ((3, 5), 0.6),
                                            ((1, 4), 0.0)])
@pytest.mark.parametrize("m", [1, 3, 20, 70])
def test_nonfinite_rows_match_reference_when_sparse(kernel, block, sparsity, m):
    # Regression: the kernels skip pruned blocks, so a NaN or Inf under a pruned block gave finite
    # outputs; the reference (a dense matmul) gives NaN (NaN * w, Inf * 0) or +-Inf there.
    packed = random_packed(24, 40, block, sparsity, seed=7)
    x = torch.randn(m, 40, generator=torch.Generator().manual_seed(1))
    x[0, 5] = float("nan")
    if m > 1:
        x[1, 33] = float("inf")
        x[m - 1, [2, 17]] = torch.tensor([float("-inf"), float("inf")])
    for relu in (False, True):
        got, want = call_wo(packed, x, relu), reference_wo(packed, x, relu)
        assert_same_nonfinite(got, want)
        assert bool(got[0].isnan().all())
        finite = want.isfinite()
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sparsity", [0.0, 0.8])
@pytest.mark.parametrize("m", [2, 20, 70])
@pytest.mark.parametrize("bad", [-1, 1000])
def test_bad_col_idx_raises_on_every_kernel(kernel, sparsity, m, bad):
    packed = random_packed(20, 48, (1, 4), sparsity, seed=8)
    col_idx = packed.col_idx.clone()
    col_idx[len(col_idx) // 2] = bad
    with pytest.raises(RuntimeError, match="block column index outside"):
        torch.ops.sqfx.qlinear_weight_only(torch.randn(m, 48), packed.values, packed.row_ptr, col_idx,
                                           packed.w_scale, packed.bias, 48, False)


def test_noncontiguous_input(kernel):
    packed = random_packed(12, 20, (2, 4), 0.3, seed=4)
    x = torch.randn(20, 6).T  # 6 x 20, not contiguous
    torch.testing.assert_close(call_wo(packed, x), call_wo(packed, x.contiguous()), rtol=0, atol=0)


@pytest.fixture
def packed():
    return random_packed(8, 12, (1, 4), 0.5)


def _args(p, x):
    return [x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias, p.in_features, False]


@pytest.mark.parametrize("index,bad,match", [
    (0, lambda t: t.double(), "input must be float32"),
    (0, lambda t: t[:, :-1], "in_features = 12"),
    (0, lambda t: torch.tensor(1.0), "at least 1 dim"),
    (1, lambda t: t.float(), "values must have dtype"),
    (1, lambda t: t.reshape(-1), "values must be 3-D"),
    (2, lambda t: t[:-1].contiguous(), "row_ptr has"),
    (2, lambda t: t.flip(0).contiguous(), "row_ptr"),
    (2, lambda t: t.long(), "row_ptr must have dtype"),
    (3, lambda t: t[:-1].contiguous(), "col_idx has"),
    (3, lambda t: t.float(), "col_idx must be int16 or int32"),
    (3, lambda t: torch.full_like(t, 3), "block column index outside"),
    (3, lambda t: torch.full_like(t, -1), "block column index outside"),
    (4, lambda t: t.double(), "w_scale must have dtype"),
    (4, lambda t: t[:-1].contiguous(), "row_ptr has"),
    (5, lambda t: t[:-1].contiguous(), "bias has"),
    (5, lambda t: t.double(), "bias must have dtype"),
])
def test_bad_arguments_raise(kernel, packed, index, bad, match):
    args = _args(packed, torch.randn(2, 12))
    args[index] = bad(args[index])
    with pytest.raises(RuntimeError, match=match):
        torch.ops.sqfx.qlinear_weight_only(*args)


def test_opcheck():
    for block, m in [((1, 4), 3), ((2, 4), 1), ((3, 5), 4)]:
        p = random_packed(10, 22, block, 0.5, seed=5)
        for relu in (False, True):
            torch.library.opcheck(torch.ops.sqfx.qlinear_weight_only.default,
                                  (torch.randn(m, 22), p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias, 22, relu))


def test_backward_is_refused():
    p = random_packed(4, 8, (1, 4), 0.0)
    x = torch.randn(2, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        call_wo(p, x).sum().backward()


# ---- SparseQuantLinear(act_mode="weight_only") ----
def test_module_mode_state_dict_and_export(tmp_path):
    lin = torch.nn.Linear(24, 16)
    layer = sqfx.SparseQuantLinear.from_float(lin, act_mode="weight_only")
    x = torch.randn(3, 24)
    torch.testing.assert_close(layer(x), call_wo(layer.packed, x), rtol=0, atol=0)
    assert "act_mode=weight_only" in repr(layer)
    other = sqfx.SparseQuantLinear.from_float(torch.nn.Linear(24, 16))
    other.load_state_dict(layer.state_dict())
    assert other.act_mode == "weight_only"
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)
    ep = torch.export.export(layer, (x,))
    assert any("qlinear_weight_only" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(x), layer(x), rtol=0, atol=0)


def test_state_without_act_mode_loads_as_dynamic_int8():
    layer = sqfx.SparseQuantLinear.from_float(torch.nn.Linear(8, 4), act_mode="weight_only")
    sd = layer.state_dict()
    # a dict state written before act_mode existed
    fields = sqfx.SparseQuantLinear.extra_state_fields(sd["_extra_state"])
    sd["_extra_state"] = {k: v for k, v in fields.items() if k != "act_mode"}
    layer.load_state_dict(sd)
    assert layer.act_mode == "dynamic_int8"


def test_unknown_act_mode_is_rejected():
    with pytest.raises(ValueError, match="act_mode must be one of"):
        sqfx.SparseQuantLinear.from_float(torch.nn.Linear(8, 4), act_mode="int4")
    layer = sqfx.SparseQuantLinear.from_float(torch.nn.Linear(8, 4))
    sd = layer.state_dict()
    sd["_extra_state"] = {**sqfx.SparseQuantLinear.extra_state_fields(sd["_extra_state"]), "act_mode": "int4"}
    with pytest.raises(RuntimeError, match="unknown act_mode 'int4'"):
        layer.load_state_dict(sd)


def test_compiles_fullgraph_dynamic():
    layer = sqfx.SparseQuantLinear.from_float(torch.nn.Linear(24, 16), act_mode="weight_only", relu=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=True)
    for m in (3, 5):
        x = torch.randn(m, 24)
        torch.testing.assert_close(compiled(x), layer(x), rtol=0, atol=0)


@pytest.mark.parametrize("m", [2, 7, 300])  # rowdot, and the fp32 panel from M = 256 (AVX-512) / 8 (AVX2)
@pytest.mark.parametrize("block", [(1, 4), (2, 4)])
def test_repeated_block_columns_add_on_every_kernel(kernel, m, block):
    # A crafted weight (only sqfx.load checks the column order) may store a block column twice in
    # a row block: the op still means the sum of the stored blocks, as the reference computes.
    # 60 output rows x 5 block columns, every block stored: the mostly-dense kernels run.
    packed = random_packed(60, 20, block, 0.0, seed=4)
    col_idx = packed.col_idx.clone()
    col_idx[1] = col_idx[0]  # row block 0: columns 0, 0, 2, ...
    col_idx[7] = col_idx[8]  # row block 1: ..., 3, 3
    packed.col_idx = col_idx
    x = torch.randn(m, 20, generator=torch.Generator().manual_seed(5))
    rb, cb = block
    dense = torch.zeros(60, 20, dtype=torch.float64)  # the blocks scattered with accumulate
    block_row = torch.repeat_interleave(torch.arange(60 // rb), (packed.row_ptr[1:] - packed.row_ptr[:-1]).long())
    for j in range(packed.nnz_blocks):
        r0, c0 = int(block_row[j]) * rb, int(col_idx[j]) * cb
        dense[r0:r0 + rb, c0:c0 + cb] += packed.values[j].double()
    want = (x.double() @ dense.T) * packed.w_scale.double() + (0 if packed.bias is None else packed.bias.double())
    got = call_wo(packed, x)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    expected_kernel = packed.kernel_for(m, "qlinear_weight_only")
    assert "rowdot" in expected_kernel or "dense" in expected_kernel or kernel == "generic", expected_kernel
