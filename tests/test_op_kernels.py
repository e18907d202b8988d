"""Every kernel path of sqfx::qlinear_dynamic the CPU has gives the reference's exact bits.

The op dispatches at run time (csrc/kernels/dispatch.cpp) on block shape, M and ISA; here
each ISA the machine has is forced in turn (sqfx.ops.force_isa) and compared with
torch.equal against sqfx.reference.qlinear_dynamic.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqfx.ops
from sqfx import reference
from sqfx.format import DENSE_BELOW_SPARSITY, MAX_INT32_IN_FEATURES, pack
from sqfx_testing import assert_same, call_op, call_reference, random_packed

ISAS = sqfx.ops.available_isas()
FAST_ISAS = [isa for isa in ISAS if isa != "generic"]
BLOCKS = [(1, 4), (8, 1), (4, 4), (1, 1), (16, 1), (1, 8), (2, 3)]
M_VALUES = [0, 1, 2, 7, 8, 33, 128]


def check_all_isas(p, x, relu):
    """Bit-exact against the reference (NaN equal to NaN: rows holding NaN/Inf give NaN outputs)."""
    expected = call_reference(p, x, relu)
    for isa in ISAS:
        with sqfx.ops.force_isa(isa):
            got = call_op(p, x, relu)
            kernel = p.kernel
        assert_same(got, expected, f"isa={isa} kernel={kernel} differs from the reference:")


def test_isa_helpers():
    assert ISAS[0] == "generic"
    assert sqfx.ops.active_isa() == ISAS[-1]
    for isa in ISAS:
        with sqfx.ops.force_isa(isa):
            assert sqfx.ops.active_isa() == isa
    assert sqfx.ops.active_isa() == ISAS[-1]
    with pytest.raises(RuntimeError, match="not available"):
        with sqfx.ops.force_isa("no-such-isa"):
            pass
    assert sqfx.ops.active_isa() == ISAS[-1]


def test_this_machine_runs_the_fast_paths():
    """Guards the test suite itself: on an x86 CPU with AVX2 the fast kernels must be tested."""
    import platform

    if platform.machine() in ("x86_64", "AMD64"):
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        if " avx2" in flags:
            assert "avx2" in ISAS
        # /proc/cpuinfo spells it avx512_vnni on Linux (the guard never fired with "avx512vnni").
        if " avx512_vnni" in flags and " avx512bw" in flags and " avx512vl" in flags:
            assert "avx512vnni" in ISAS


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 70),
    k=st.integers(1, 150),
    block=st.sampled_from(BLOCKS),
    sparsity=st.sampled_from([0.0, 0.3, 0.7, 0.95, 1.0]),
    m=st.sampled_from(M_VALUES),
    relu=st.booleans(),
    per_channel=st.booleans(),
    col_dtype=st.sampled_from([torch.int16, torch.int32]),
    seed=st.integers(0, 2**16),
)
def test_every_isa_matches_reference(n, k, block, sparsity, m, relu, per_channel, col_dtype, seed):
    p = random_packed(n, k, block, sparsity, per_channel, bias=seed % 3 != 0, seed=seed, col_dtype=col_dtype)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 4 - 1
    check_all_isas(p, x, relu)


@pytest.mark.parametrize("block", [(1, 4), (8, 1), (4, 4), (1, 1), (16, 1)])
@pytest.mark.parametrize("m", M_VALUES)
def test_blocks_and_rows_grid(block, m):
    # Non-divisible N and K; every M regime (rows kernel, panel kernel with several chunks).
    p = random_packed(45, 203, block, 0.6, seed=7)
    x = torch.randn(m, 203) * 3
    check_all_isas(p, x, relu=False)
    check_all_isas(p, x, relu=True)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("m", [1, 3, 8, 200])
def test_saturation_proof(layout, m):
    """Activations quantized to 255 with zero point 0 against weights of +-127: a kernel that
    let vpmaddubsw saturate (255*127*2 > 32767) would be off here."""
    n, k = 24, 256
    sign = torch.where(torch.arange(n * k).reshape(n, k) % 3 == 0, -1.0, 1.0)
    w = sign * torch.linspace(1, 2, n)[:, None]  # every row's max |w| -> 127 after quantization
    p = pack(w, block=(1, 4), layout=layout) if layout == "dense" else pack(w, block=(1, 4))
    q = torch.round(w / p.w_scale[:, None])
    assert int(q.abs().max()) == 127 and int(q.abs().min()) == 127
    x = torch.full((m, k), 2.5)  # nonnegative rows at their max: q = 255, zp = 0
    qx, _, zp = reference.quantize_rows(x)
    assert bool((qx == 255).all()) and bool((zp == 0).all())
    check_all_isas(p, x, relu=False)
    p8 = pack(w, block=(8, 1))
    check_all_isas(p8, x, relu=False)


def test_extreme_rows():
    """NaN/Inf rows, constant rows, all-negative rows, large magnitudes, -0.0."""
    k = 96
    rows = [
        torch.zeros(k), torch.full((k,), -0.0), torch.full((k,), 3.0), torch.full((k,), -5.0),
        torch.linspace(-1e30, 1e30, k), torch.linspace(-1e-30, 1e-30, k), torch.randn(k) * 1e4,
    ]
    nan_row = torch.randn(k)
    nan_row[5] = float("nan")
    inf_row = torch.randn(k)
    inf_row[-1] = float("inf")
    x = torch.stack(rows + [nan_row, inf_row] + [torch.randn(k) for _ in range(10)])
    for block in [(1, 4), (8, 1), (4, 4)]:
        p = random_packed(33, k, block, 0.5, bias=False, seed=3)
        check_all_isas(p, x, relu=True)
        check_all_isas(p, x, relu=False)


def test_dense_layout_equals_sparse_numerics():
    sparse = random_packed(50, 90, (1, 4), 0.4, seed=5)
    dense = random_packed(50, 90, (1, 4), 0.4, seed=5, layout="dense").validate()  # the same weight
    assert dense.layout == "dense" and sparse.layout == "sparse"
    assert dense.block == (1, 92) and dense.nnz_blocks == 50
    assert torch.equal(dense.unpack(), sparse.unpack())
    x = torch.randn(19, 90, generator=torch.Generator().manual_seed(6))
    for isa in ISAS:
        with sqfx.ops.force_isa(isa):
            assert torch.equal(call_op(dense, x, True), call_op(sparse, x, True))
    check_all_isas(dense, x, relu=False)


def test_layout_auto_and_kernel_names():
    w = torch.randn(64, 128)
    mask_dense = torch.ones(64, 32, dtype=torch.bool)
    mask_sparse = torch.rand(64, 32) >= 0.97
    mask_sparse[0, 0] = True
    assert pack(w, mask_dense, block=(1, 4), layout="auto").layout == "dense"
    assert pack(w, mask_sparse, block=(1, 4), layout="auto").layout == "sparse"
    assert DENSE_BELOW_SPARSITY["1x4"] < 0.97
    best = ISAS[-1]
    sparse = pack(w, mask_sparse, block=(1, 4))
    dense = pack(w, block=(1, 4), layout="dense")
    if best == "generic":
        assert sparse.kernel == dense.kernel == "qd8_bsr__scalar"
    else:
        assert sparse.kernel_for(1) == f"qd8_bsr1x4_tiled16x32__{best}"  # PackedLinear passes tiled()
        assert pack(w, block=(1, 8)).kernel_for(1) == f"qd8_bsr1x4c_rows__{best}"
        assert sparse.kernel_for(16).startswith("qd8_bsr1x4c_panel") and sparse.kernel_for(16).endswith(best)
        assert sparse.kernel_for(64).startswith("qd8_bsr1x4_gemm") and sparse.kernel_for(64).endswith(best)
        assert pack(w, block=(1, 8)).kernel_for(64).startswith("qd8_bsr1x4c_panel")  # the GEMM is 1x4 only
        with sqfx.ops.force_isa(best):  # forced: our own dense kernel, never oneDNN
            assert dense.kernel_for(64).startswith("qd8_dense_panel") and dense.kernel_for(64).endswith(best)
        # few rows: the VNNI 4 x 4 row tile along K; AVX2 keeps its panel kernel
        assert dense.kernel_for(8) == ("qd8_dense_rows4x4__avx512vnni" if best == "avx512vnni" else "qd8_dense_panel2x16__avx2")
        assert pack(w, block=(8, 1)).kernel == "qd8_bsr8x1_rows8__avx2"  # on VNNI CPUs too
        assert sparse.kernel.startswith(f"qd8_bsr1x4_tiled16x32__{best} (M 1-")
    assert pack(w, block=(4, 4)).kernel == "qd8_bsr__scalar"
    with sqfx.ops.force_isa("generic"):
        assert pack(w, block=(8, 1)).kernel == "qd8_bsr__scalar"
        assert sparse.kernels("qlinear_weight_only") == [(1, None, "f32_qc8w_bsr__scalar")]
    with pytest.raises(ValueError, match="layout"):
        pack(w, layout="diagonal")


def test_threads_give_identical_output():
    p = random_packed(512, 384, (1, 4), 0.5, seed=11)
    p8 = random_packed(512, 384, (8, 1), 0.5, bias=False, seed=12)
    before = torch.get_num_threads()
    try:
        for packed in (p, p8):
            for m in (1, 4, 64, 300):
                x = torch.randn(m, 384)
                for isa in ISAS:
                    with sqfx.ops.force_isa(isa):
                        torch.set_num_threads(1)
                        one = call_op(packed, x, True)
                        torch.set_num_threads(2)
                        two = call_op(packed, x, True)
                    assert torch.equal(one, two), (isa, m)
                assert torch.equal(one, call_reference(packed, x, True))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("isa", FAST_ISAS)
@pytest.mark.parametrize("block", [(1, 4), (8, 1)])
@pytest.mark.parametrize("m", [1, 2, 3, 40])
def test_fast_kernels_reject_out_of_range_column(isa, block, m):
    p = random_packed(32, 64, block, 0.0, seed=2)
    for bad in (p.n_col_blocks, -1):
        col_idx = p.col_idx.clone()
        col_idx[len(col_idx) // 2] = bad  # inside a full group of 8 blocks
        col_idx_tail = p.col_idx.clone()
        col_idx_tail[-1] = bad  # in a row's tail
        for ci in (col_idx, col_idx_tail):
            with sqfx.ops.force_isa(isa):
                with pytest.raises(RuntimeError, match="col_idx holds a block column index outside"):
                    torch.ops.sqfx.qlinear_dynamic(
                        torch.randn(m, 64), p.values, p.row_ptr, ci, p.w_scale, p.w_sum, p.bias, 64, False
                    )


def test_int32_limit_falls_back_to_int64_kernel():
    """Above MAX_INT32_IN_FEATURES the dispatcher must use the exact int64 generic kernel."""
    assert pack(torch.ones(2, MAX_INT32_IN_FEATURES + 4)).kernel == "qd8_bsr__scalar"
    k = 2 * MAX_INT32_IN_FEATURES + 8  # valid params whose accumulators pass int32
    n = 2
    w = torch.full((n, k), 1.0)
    w[1] = -1.0
    p = pack(w, block=(1, 4))
    assert p.kernel == "qd8_bsr__scalar"
    x = torch.full((1, k), 7.0)  # q = 255 everywhere: |acc| = 255 * 127 * k > 2**31
    acc, _ = reference.accumulators(x, *p.tensors()[:3], p.w_sum, n, k)
    assert int(acc.abs().max()) > 2**31 - 1
    check_all_isas(p, x, relu=False)


@pytest.mark.parametrize("block,layout", [((1, 4), "sparse"), ((1, 4), "dense"), ((8, 1), "sparse")])
@pytest.mark.parametrize("rows", [1, 5])
def test_tampered_w_sum_in_the_accepted_bound_is_exact_on_every_kernel_path(block, layout, rows):
    # Issue 13.4: |w_sum| <= 127 * K passes the op's entry check, but acc - zp * w_sum then
    # reaches ~2 * 255 * 127 * K, past int32 once K_pad > 33,155: the int32 kernels wrapped.
    k, n = 40_000, 8
    p = sqfx.pack(torch.full((n, k), 1.0), block=block, layout=layout)  # every weight 127
    p.w_sum = torch.full((n,), -127 * k, dtype=torch.int32)
    x = torch.zeros(rows, k)
    x[:, 0] = -1.0  # zero point 255; q = 255 everywhere else
    expected = reference.qlinear_dynamic(x, *p.tensors(), k, False)
    assert float(expected.abs().max()) > 2**31 * float(p.w_scale[0]) / 255  # past int32
    for isa in sqfx.ops.available_isas():
        with sqfx.ops.force_isa(isa):
            assert torch.equal(torch.ops.sqfx.qlinear_dynamic(x, *p.tensors(), k, False), expected), isa


def test_kernel_table_reaches_every_kernel_and_isa():
    """Every table row is reachable: the name the table reports is the kernel that runs (a forced
    ISA only ever picks rows of that ISA or below), and every row of this CPU's ISAs is chosen
    for some probe weight / M under some forced ISA."""
    names = sqfx.ops.kernel_names()
    assert len(names) == len(set(names))
    assert names[-2:] == ["qd8_bsr__scalar", "f32_qc8w_bsr__scalar"]
    w = torch.randn(40, 96)
    probes = [pack(w, block=(1, 4)), pack(w, block=(1, 4), layout="dense"), pack(w, block=(8, 1)),
              pack(w, block=(4, 4)), pack(w, torch.rand(40, 24, generator=torch.Generator().manual_seed(0)) > 0.8)]
    isa_rank = {isa: i for i, isa in enumerate(["generic", "avx2", "avx512vnni"])}
    seen = set()
    for isa in ISAS:
        with sqfx.ops.force_isa(isa):
            for p in probes:
                for op in ("qlinear_dynamic", "qlinear_weight_only"):
                    for m in (0, 1, 3, 4, 16, 17, 1000):
                        name = p.kernel_for(m, op)
                        assert name in names
                        suffix = name.rsplit("__", 1)[1]
                        assert isa_rank.get(suffix, 0) <= isa_rank[isa], (isa, name)
                        seen.add(name)
    # Unforced, the dense layout at large M runs oneDNN where its probe found it exact (VNNI).
    onednn = probes[1].kernel_for(1000)
    assert onednn in names and (onednn == "qd8_dense_onednn__avx512vnni" or onednn.startswith("qd8_dense_panel"))
    seen.add(onednn)
    # Unforced, a sparse 1x4 weight of >= 15% blocks and K >= 2048 at M >= 1024 runs oneDNN's GEMM
    # on a dense scatter where SQFX_DENSIFY=1 (by default: AMX CPUs) and oneDNN is exact.
    densify = pack(torch.randn(16, 2048), block=(1, 4))
    os.environ["SQFX_DENSIFY"] = "1"
    try:
        densified = densify.kernel_for(1024)
    finally:
        del os.environ["SQFX_DENSIFY"]
    seen.add(densified)
    reachable = {n for n in names if n.rsplit("__", 1)[1] in {"scalar", *ISAS}}
    if onednn != "qd8_dense_onednn__avx512vnni":  # this CPU's oneDNN s8 GEMM is not exact
        reachable.discard("qd8_dense_onednn__avx512vnni")
        reachable.discard("qd8_bsr1x4_densify_onednn__avx512vnni")
    assert reachable <= seen, reachable - seen


def test_kernel_for_rejects_bad_arguments():
    p = pack(torch.randn(8, 16), block=(1, 4))
    with pytest.raises(RuntimeError, match="op must be"):
        torch.ops.sqfx._kernel_for("qlinear_nope", p.values, p.row_ptr, p.col_idx, p.w_scale, 16, 1)
    with pytest.raises(RuntimeError, match="M must be"):
        p.kernel_for(-1)
    with pytest.raises(RuntimeError, match="row_ptr"):
        torch.ops.sqfx._kernel_for("qlinear_dynamic", p.values, p.row_ptr[:-1], p.col_idx, p.w_scale, 16, 1)
