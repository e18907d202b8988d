"""Token-batch paths of sqfx::qlinear_dynamic (issue 10 item 1) give the reference's exact bits.

"auto" is what dispatch picks when no ISA is forced: for the dense layout at M >= 16 on a CPU with
VNNI that is oneDNN's int8 GEMM through aten::_int_mm (csrc/kernels/gemm_dense_s8_onednn.cpp);
forcing an ISA (sqfx.ops.force_isa) runs our own kernels of that ISA. Each path is compared with
torch.equal (NaN equal to NaN) against sqfx.reference.qlinear_dynamic.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqfx.ops
from sqfx import reference
from sqfx.format import pack
from sqfx_testing import assert_same, call_op, call_reference, random_packed

PATHS = ["auto"] + sqfx.ops.available_isas()


def run_path(path, p, x, relu):
    if path == "auto":
        return p(x, relu)
    with sqfx.ops.force_isa(path):
        return p(x, relu)


def check_paths(p, x, relu):
    expected = call_reference(p, x, relu)
    for path in PATHS:
        got = run_path(path, p, x, relu)
        assert_same(got, expected, f"path={path} layout={p.layout} M={x.shape[0]} differs from the reference:")


def with_special_rows(x):
    x = x.clone()
    if x.shape[0] > 2:
        x[1, 0] = float("nan")
        x[2, -1] = float("inf")
    if x.shape[0] > 3:
        x[3] = 0.0
    return x


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 90),
    k=st.integers(1, 300),
    sparsity=st.sampled_from([0.0, 0.5, 0.8, 0.9, 1.0]),
    layout=st.sampled_from(["sparse", "dense"]),
    m=st.sampled_from([15, 16, 17, 64, 100, 257]),
    relu=st.booleans(),
    per_channel=st.booleans(),
    col_dtype=st.sampled_from([torch.int16, torch.int32]),
    seed=st.integers(0, 2**16),
)
def test_token_batch_paths_match_reference(n, k, sparsity, layout, m, relu, per_channel, col_dtype, seed):
    p = random_packed(n, k, (1, 4), sparsity, per_channel, bias=seed % 3 != 0, seed=seed,
                      layout=layout, col_dtype=col_dtype)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 3 - 0.5
    check_paths(p, with_special_rows(x), relu)


@pytest.mark.parametrize("layout", ["sparse", "dense"])
@pytest.mark.parametrize("n,k,m", [(1, 4, 16), (3, 5, 64), (64, 768, 130), (200, 1536, 64), (257, 100, 600)])
def test_edge_shapes_bias_none(layout, n, k, m):
    p = random_packed(n, k, (1, 4), 0.8 if layout == "sparse" else 0.0, bias=False, seed=3, layout=layout)
    assert p.bias is None
    x = with_special_rows(torch.randn(m, k))
    check_paths(p, x, relu=False)
    check_paths(p, x, relu=True)


@pytest.mark.parametrize("m", [16, 64, 300])
def test_saturation_proof_token_batch(m):
    """q = 255 (zp 0) against +-127 weights; and q = 0 (zp 255): as s8 q - 128 these are the
    extremes 127 and -128, where a saturating int8 GEMM goes wrong."""
    n, k = 40, 512
    sign = torch.where(torch.arange(n * k).reshape(n, k) % 3 == 0, -1.0, 1.0)
    w = sign * torch.linspace(1, 2, n)[:, None]
    p = pack(w, block=(1, 4), layout="dense")
    x = torch.full((m, k), 2.5)
    x[m // 2 :] = -2.5
    check_paths(p, x, relu=False)


def test_onednn_capped_below_vnni_stays_exact():
    """oneDNN's s8 GEMM without VNNI saturates (measured: ONEDNN_MAX_CPU_ISA=AVX2 is wrong by
    up to 2%); the op must notice that (one-time probe) and use its own exact kernels."""
    code = (
        "import torch, sqfx\n"
        "from sqfx import reference\n"
        "torch.manual_seed(0)\n"
        "w = torch.randn(48, 256)\n"
        "p = sqfx.pack(w, block=(1, 4), layout='dense')\n"
        "x = torch.randn(64, 256) * 2\n"
        "x[:8] = 2.5\n"
        "e = reference.qlinear_dynamic(x, *p.tensors(), p.in_features, False)\n"
        "assert torch.equal(p(x), e)\n"
        "a = torch.randint(0, 128, (64, 256), dtype=torch.int8)\n"
        "b = torch.full((256, 48), 127, dtype=torch.int8)\n"
        "print('capped_inexact', not torch.equal(torch._int_mm(a, b), (a.long() @ b.long()).int()))\n"
    )
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", DNNL_MAX_CPU_ISA="AVX2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "capped_inexact" in r.stdout


@pytest.mark.parametrize("layout", ["sparse", "dense"])
def test_token_batch_threads_identical(layout):
    p = random_packed(300, 640, (1, 4), 0.9 if layout == "sparse" else 0.0, seed=4, layout=layout)
    x = torch.randn(200, 640)
    before = torch.get_num_threads()
    try:
        for path in PATHS:
            torch.set_num_threads(1)
            one = run_path(path, p, x, True)
            torch.set_num_threads(2)
            two = run_path(path, p, x, True)
            assert torch.equal(one, two), path
        assert torch.equal(one, call_reference(p, x, True))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("m", [16, 64])
def test_dense_token_batch_rejects_nonzero_column(m):
    p = pack(torch.randn(16, 64), block=(1, 4), layout="dense")
    col_idx = p.col_idx.clone()
    col_idx[5] = 1
    for path in PATHS[1:] + ["auto"]:
        with pytest.raises(RuntimeError, match="col_idx holds a block column index outside"):
            if path == "auto":
                torch.ops.sqfx.qlinear_dynamic(torch.randn(m, 64), p.values, p.row_ptr, col_idx, p.w_scale,
                                               p.w_sum, p.bias, 64, False)
            else:
                with sqfx.ops.force_isa(path):
                    torch.ops.sqfx.qlinear_dynamic(torch.randn(m, 64), p.values, p.row_ptr, col_idx,
                                                   p.w_scale, p.w_sum, p.bias, 64, False)


@pytest.mark.parametrize("n", [1024, 1008, 1000])
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_large_output_exact(n, threads):
    """An output of over 4 MiB, through the 16 x 16 transposed flushes: with 2 threads the output
    rows split at a point that need not be a multiple of 16, so whole blocks and the scalar
    edges meet in one call (N = 1000 has a partial block in every flush); NaN / inf rows and
    ReLU ride along."""
    p = random_packed(n, 96, (1, 4), 0.8, seed=11)
    m = 1100  # 1100 x 1000+ floats > 4 MiB, and 1100 = 17 passes of 64 rows + 12
    x = with_special_rows(torch.randn(m, 96, generator=torch.Generator().manual_seed(12)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check_paths(p, x, relu=True)
        check_paths(p, x, relu=False)
    finally:
        torch.set_num_threads(before)


def _permute_rows_blocks(p, seed):
    """The same weight with each row's blocks stored in a shuffled column order."""
    g = torch.Generator().manual_seed(seed)
    order = []
    rp = p.row_ptr.tolist()
    for r in range(len(rp) - 1):
        order.append(torch.randperm(rp[r + 1] - rp[r], generator=g) + rp[r])
    order = torch.cat(order) if order else torch.zeros(0, dtype=torch.long)
    return p.values[order].contiguous(), p.col_idx[order].contiguous()


@pytest.mark.parametrize("k", [2052, 4100])  # > one K tile of the GEMM (2048 columns per 64-row pass)
@pytest.mark.parametrize("m", [40, 64, 130])
def test_gemm_several_k_tiles_and_unsorted_columns(k, m):
    p = random_packed(37, k, (1, 4), 0.85, seed=5)
    x = with_special_rows(torch.randn(m, k))
    check_paths(p, x, relu=True)
    values, col_idx = _permute_rows_blocks(p, seed=1)
    assert not torch.equal(col_idx, p.col_idx)
    expected = reference.qlinear_dynamic(x, values, p.row_ptr, col_idx, p.w_scale, p.w_sum, p.bias, k, False)
    for path in PATHS:
        if path == "auto":
            got = torch.ops.sqfx.qlinear_dynamic(x, values, p.row_ptr, col_idx, p.w_scale, p.w_sum, p.bias, k, False)
        else:
            with sqfx.ops.force_isa(path):
                got = torch.ops.sqfx.qlinear_dynamic(x, values, p.row_ptr, col_idx, p.w_scale, p.w_sum, p.bias,
                                                     k, False)
        assert_same(got, expected, path)


@pytest.mark.parametrize("bad", [-1, -30000, "n_cb"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_gemm_rejects_bad_column_in_any_k_tile(bad, where):
    k = 4100
    p = random_packed(8, k, (1, 4), 0.5, bias=False, seed=6)
    bad = p.n_col_blocks if bad == "n_cb" else bad
    col_idx = p.col_idx.clone()
    start, end = int(p.row_ptr[3]), int(p.row_ptr[4])
    col_idx[{"first": start, "middle": (start + end) // 2, "last": end - 1}[where]] = bad
    for path in PATHS:
        if path == "generic":
            continue
        ctx = sqfx.ops.force_isa(path) if path != "auto" else torch.no_grad()
        with ctx, pytest.raises(RuntimeError, match="col_idx holds a block column index outside"):
            torch.ops.sqfx.qlinear_dynamic(torch.randn(64, k), p.values, p.row_ptr, col_idx, p.w_scale, p.w_sum,
                                           p.bias, k, False)


# ---- the densify row: sparse 1x4 at large M through oneDNN's dense GEMM (AMX CPUs) ----
DENSIFY = "qd8_bsr1x4_densify_onednn__avx512vnni"


def _densify_weight(n=48, k=2048, sparsity=0.7, seed=0):
    return random_packed(n, k, (1, 4), sparsity, seed=seed)


@pytest.fixture
def densify_on(monkeypatch):
    """SQFX_DENSIFY=1 turns the row on on any CPU where oneDNN's s8 GEMM is exact (VNNI)."""
    monkeypatch.setenv("SQFX_DENSIFY", "1")
    if _densify_weight().kernel_for(1024) != DENSIFY:
        pytest.skip("oneDNN's int8 GEMM is not exact on this CPU (no VNNI): the densify row is off")


@pytest.mark.parametrize("relu", [False, True])
def test_densify_row_is_exact(densify_on, relu):
    p = _densify_weight()
    x = with_special_rows(torch.randn(1030, 2048) * 2)
    assert p.kernel_for(x.shape[0]) == DENSIFY
    assert_same(call_op(p, x, relu), call_reference(p, x, relu))


def test_densify_row_conditions(densify_on, monkeypatch):
    assert _densify_weight().kernel_for(1023) != DENSIFY  # below kDensifyMinRows
    assert _densify_weight(sparsity=0.9).kernel_for(4096) != DENSIFY  # too sparse: the sparse GEMM wins
    assert _densify_weight(k=768).kernel_for(4096) != DENSIFY  # small K: the sparse GEMM wins
    with sqfx.ops.force_isa("avx512vnni") if "avx512vnni" in PATHS else sqfx.ops.force_isa("avx2"):
        assert _densify_weight().kernel_for(4096) != DENSIFY  # a forced ISA runs our own kernels
    monkeypatch.setenv("SQFX_DENSIFY", "0")
    assert _densify_weight().kernel_for(4096) != DENSIFY


def test_densify_row_ignores_a_tampered_w_sum(densify_on):
    """The scatter recomputes the true row sums for the q - 128 shift, so a tampered (in-bound)
    w_sum gives the reference's answer, as on every other path."""
    p = _densify_weight(seed=1)
    p.w_sum = p.w_sum + torch.arange(p.w_sum.numel(), dtype=torch.int32) % 7 - 3
    x = torch.randn(1024, 2048)
    assert_same(call_op(p, x), call_reference(p, x))


def test_densify_row_hands_repeated_columns_on_and_refuses_bad_ones(densify_on):
    p = _densify_weight(n=8, seed=2)
    row0 = slice(int(p.row_ptr[0]), int(p.row_ptr[1]))
    p.col_idx[row0] = p.col_idx[row0][0]  # a crafted weight: every block of row 0 in one column
    x = torch.randn(1024, 2048)
    with sqfx.ops.force_isa("generic"):  # (the reference's int8 expansion cannot hold the sums)
        expected = call_op(p, x)
    assert_same(call_op(p, x), expected)  # the next row (the sparse GEMM) adds them, as every kernel
    p.col_idx[0] = p.col_idx.new_tensor(10_000)
    with pytest.raises(RuntimeError, match="col_idx holds a block column index outside"):
        call_op(p, x)


@pytest.mark.parametrize("m", [16, 100])
def test_dense_onednn_path_ignores_a_tampered_w_sum(m):
    """The oneDNN row undid its q - 128 shift with w_sum, so an in-bound tampered w_sum (a .pt2
    read with plain torch.export.load) changed its answer while every other kernel kept the
    reference's; it now uses the weight's true row sums."""
    p = sqfx.pack(torch.randn(40, 200), layout="dense")
    p.w_sum = p.w_sum + torch.arange(40, dtype=torch.int32) % 5 - 2
    x = torch.randn(m, 200)
    assert_same(call_op(p, x), call_reference(p, x))


DENSE_ROWS = "qd8_dense_rows4x4__avx512vnni"


@pytest.mark.skipif("avx512vnni" not in sqfx.ops.available_isas(), reason="needs an AVX-512 VNNI CPU")
@pytest.mark.parametrize("n,k", [(1, 4), (7, 60), (16, 64), (37, 200), (64, 2048), (13, 2100)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_rows_tile_matches_reference(n, k, bias):
    """The VNNI dense row tile (4 input x 4 output rows, vectors along K): every M edge (M % 4,
    N % 4), K % 64 tails, K_pad >= 2048 (where it serves up to M = 128), NaN / Inf / zero rows,
    ReLU; exact bits against the reference."""
    p = random_packed(n, k, (1, 4), 0.0, bias=bias, seed=n + k, layout="dense")
    k_pad = p.values.shape[1] if p.values.dim() == 2 else k
    for m in [4, 5, 6, 7, 8, 13, 15, 16, 17, 31, 32, 33, 100, 128, 129]:
        served = p.kernel_for(m) == DENSE_ROWS
        if m <= 15:
            assert served, (m, p.kernel_for(m))
        if not served:
            continue
        x = with_special_rows(torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 2)
        for relu in (False, True):
            assert_same(p(x, relu), call_reference(p, x, relu), f"n={n} k={k} (k_pad {k_pad}) m={m} relu={relu}")


@pytest.mark.skipif("avx512vnni" not in sqfx.ops.available_isas(), reason="needs an AVX-512 VNNI CPU")
@pytest.mark.parametrize("m", [4, 9, 30])
def test_dense_rows_tile_rejects_nonzero_column(m):
    p = pack(torch.randn(18, 64), block=(1, 4), layout="dense")
    assert p.kernel_for(m) == DENSE_ROWS or m > 15
    col_idx = p.col_idx.clone()
    col_idx[17] = 1
    with pytest.raises(RuntimeError, match="col_idx holds a block column index outside"):
        torch.ops.sqfx.qlinear_dynamic(torch.randn(m, 64), p.values, p.row_ptr, col_idx, p.w_scale,
                                       p.w_sum, p.bias, 64, False)
