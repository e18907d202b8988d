"""The small-M tiled layout of 1x4 weights (csrc/kernels/bsr_1x4_tiled*.cpp).

PackedLinear.tiled() derives it (sqfx::_pack_tiled); qlinear_dynamic takes it as five optional
tensors and runs the gather-free kernels for small M. Every ISA path must give the reference's
exact bits, the layout must hold every stored block exactly once, and the op must reject
malformed tiled tensors with a clear error before reading them.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sqfx.ops
from sqfx import reference
from sqfx.format import pack
from sqfx_testing import assert_same, random_packed

ISAS = sqfx.ops.available_isas()
FAST = [isa for isa in ISAS if isa != "generic"]
LANES, WINDOW = 16, 32


def op(p, x, relu=False, tiled=None):
    tiled = p.tiled() if tiled is None else tiled  # None when the weight looks like the dense layout
    return torch.ops.sqfx.qlinear_dynamic(x, *p.tensors(), p.in_features, relu, *(tiled or ()))


def decode(p, tiled):
    """Plain-PyTorch reading of the layout: the dense int8 weight it describes."""
    tile_ptr, step_col, slot_w, slot_idx, row_perm = tiled
    dense = torch.zeros(p.out_features, p.n_col_blocks, 4, dtype=torch.int64)
    hits = torch.zeros(p.out_features, p.n_col_blocks, dtype=torch.int64)
    for t in range(len(tile_ptr) - 1):
        for s in range(int(tile_ptr[t]), int(tile_ptr[t + 1])):
            for lane in range(LANES):
                r = int(row_perm[t * LANES + lane])
                wv = slot_w[s, 4 * lane:4 * lane + 4].long()
                if r < 0:
                    assert not bool(wv.any())
                    continue
                c = int(step_col[s]) + int(slot_idx[s, lane])
                if bool(wv.any()):
                    dense[r, c] += wv
                    hits[r, c] += 1
    return dense.reshape(p.out_features, -1)[:, :p.in_features], hits


@pytest.mark.parametrize("n,k,sparsity", [(45, 203, 0.6), (16, 128, 0.0), (33, 8, 0.3), (70, 400, 0.9),
                                          (5, 1000, 0.97)])
def test_layout_holds_every_block_once(n, k, sparsity):
    p = random_packed(n, k, (1, 4), sparsity, seed=n)
    tiled = p.tiled()
    tile_ptr, step_col, slot_w, slot_idx, row_perm = tiled
    assert tile_ptr.dtype == step_col.dtype == row_perm.dtype == torch.int32
    assert slot_w.dtype == torch.int8 and slot_idx.dtype == torch.uint8
    assert len(tile_ptr) == math.ceil(n / LANES) + 1 and int(tile_ptr[-1]) == len(step_col)
    assert sorted(r for r in row_perm.tolist() if r >= 0) == list(range(n))
    assert slot_idx.numel() == 0 or int(slot_idx.max()) < WINDOW
    assert bool((step_col >= 0).all()) and bool((step_col <= max(0, p.n_col_blocks - WINDOW)).all())
    dense, hits = decode(p, tiled)
    want = reference.dense_int8(p.values, p.row_ptr, p.col_idx, n, k).long()
    assert torch.equal(dense, want)
    # each stored block (a block of zeros is invisible to decode) is in one slot only
    assert hits.numel() == 0 or int(hits.max()) <= 1


def test_padding_stays_small_on_random_masks():
    """Slots per stored block of the greedy windows with count-sorted rows (seeded: a change of
    the packer that loses this shows up here, not only in timings)."""
    for sparsity, bound in ((0.5, 1.15), (0.8, 1.35), (0.9, 1.6)):
        p = random_packed(512, 4096, (1, 4), sparsity, seed=1)
        slots = p.tiled()[1].numel() * LANES
        assert slots / p.nnz_blocks < bound, (sparsity, slots / p.nnz_blocks)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 70), k=st.integers(1, 300),
    sparsity=st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0]),
    m=st.integers(0, 20), relu=st.booleans(), per_channel=st.booleans(), bias=st.booleans(),
    col_dtype=st.sampled_from([torch.int16, torch.int32]), seed=st.integers(0, 2**16),
)
def test_every_isa_matches_reference(n, k, sparsity, m, relu, per_channel, bias, col_dtype, seed):
    p = random_packed(n, k, (1, 4), sparsity, per_channel, bias, seed, col_dtype=col_dtype)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 4 - 1
    want = reference.qlinear_dynamic(x, *p.tensors(), k, relu)
    for isa in ISAS:
        with sqfx.ops.force_isa(isa):
            assert torch.equal(op(p, x, relu), want), (isa, p.kernel_for(m))
            assert torch.equal(p(x, relu), want), isa


@pytest.mark.parametrize("isa", FAST)
def test_tiled_kernels_are_chosen_for_small_m(isa):
    p = random_packed(64, 256, (1, 4), 0.8, seed=3)
    with sqfx.ops.force_isa(isa):
        assert p.kernel_for(1) == f"qd8_bsr1x4_tiled16x32__{isa}"
        big = p.kernels()[-1]
        assert big[1] is None and "gemm" in big[2]  # the token-batch GEMM from M = 32 on
        assert "tiled" not in pack(torch.randn(8, 16), block=(1, 8)).kernel_for(1)
        assert "tiled" not in pack(torch.randn(8, 16), block=(1, 4), layout="dense").kernel_for(1)
        # M range of the tiled row: exactly where kernel_for says it is, and bit-exact around it
        last = next(r for r in p.kernels() if "tiled" in r[2])[1]
        for m in (last, last + 1):
            x = torch.randn(m, 256)
            assert torch.equal(p(x), reference.qlinear_dynamic(x, *p.tensors(), 256, False))


def test_extreme_rows_and_saturation():
    k = 256
    w = torch.where(torch.arange(24 * k).reshape(24, k) % 3 == 0, -1.0, 1.0)
    p = pack(w, block=(1, 4))
    x = torch.stack([torch.full((k,), 2.5), torch.zeros(k), torch.full((k,), -3.0),
                     torch.linspace(-1e30, 1e30, k), torch.randn(k)])
    x[4, 7] = float("nan")
    want = reference.qlinear_dynamic(x, *p.tensors(), k, True)
    for isa in ISAS:
        with sqfx.ops.force_isa(isa):
            assert_same(op(p, x, relu=True), want, isa)


def test_threads_give_identical_output():
    p = random_packed(512, 768, (1, 4), 0.8, seed=11)
    before = torch.get_num_threads()
    try:
        for m in (1, 3, 8):
            x = torch.randn(m, 768)
            for isa in ISAS:
                with sqfx.ops.force_isa(isa):
                    torch.set_num_threads(1)
                    one = op(p, x)
                    torch.set_num_threads(2)
                    assert torch.equal(one, op(p, x)), (isa, m)
    finally:
        torch.set_num_threads(before)


def test_opcheck():
    p = random_packed(40, 96, (1, 4), 0.5, seed=2)
    x = torch.randn(3, 96)
    torch.library.opcheck(torch.ops.sqfx.qlinear_dynamic.default,
                          (x, *p.tensors(), 96, False, *p.tiled()))


def test_cache_follows_in_place_changes():
    p = random_packed(32, 64, (1, 4), 0.5, seed=4)
    first = p.tiled()
    assert p.tiled() is first
    with torch.no_grad():
        p.values.neg_()
    assert p.tiled() is not first
    x = torch.randn(2, 64)
    assert torch.equal(p(x), reference.qlinear_dynamic(x, *p.tensors(), 64, False))


def test_inference_mode_tensors():
    """Tensors made under torch.inference_mode have no version counter (regression)."""
    with torch.inference_mode():
        p = random_packed(32, 64, (1, 4), 0.5, seed=4)
        x = torch.randn(2, 64)
        assert torch.equal(p(x), reference.qlinear_dynamic(x, *p.tensors(), 64, False))
        p.values = p.values.neg()  # replacing a tensor is seen
        assert torch.equal(p(x), reference.qlinear_dynamic(x, *p.tensors(), 64, False))


@pytest.mark.parametrize("case,match", [
    ("missing", "needs all of"),
    ("tile_ptr_len", "tile_ptr has"),
    ("tile_ptr_order", "start at 0 and be non-decreasing"),
    ("tile_ptr_end", r"tile_ptr\[-1\]"),
    ("slot_w_shape", "slot_w must be"),
    ("slot_idx_dtype", "slot_idx must have dtype torch.uint8"),
    ("perm_range", "row_perm must name each of the 40"),
    ("perm_count", "row_perm must name each of the 40"),
    ("step_col_high", "step_col holds a window start outside"),
    ("step_col_negative", "step_col holds a window start outside"),
    ("not_1x4", "only defined for 1x4"),
])
def test_bad_tiled_tensors_raise(case, match):
    p = random_packed(40, 300, (1, 4), 0.5, seed=5)
    tiled = [t.clone() for t in p.tiled()]
    args = list(p.tensors())
    if case == "missing":
        tiled[3] = None
    elif case == "tile_ptr_len":
        tiled[0] = tiled[0][:-1]
    elif case == "tile_ptr_order":
        tiled[0][1] = int(tiled[0][2]) + 1
    elif case == "tile_ptr_end":
        tiled[0][-1] -= 1
    elif case == "slot_w_shape":
        tiled[2] = tiled[2][:, :32].contiguous()
    elif case == "slot_idx_dtype":
        tiled[3] = tiled[3].to(torch.int8)
    elif case == "perm_count":
        tiled[4][0] = -1
    elif case == "perm_range":
        tiled[4][0] = 40
    elif case == "step_col_high":
        tiled[1][3] = p.n_col_blocks
    elif case == "step_col_negative":
        tiled[1][-1] = -5
    elif case == "not_1x4":
        q = pack(torch.randn(40, 300), block=(1, 8))
        args = list(q.tensors())
    isas = FAST if case.startswith("step_col") else ISAS[-1:]
    for isa in isas:
        with sqfx.ops.force_isa(isa), pytest.raises(RuntimeError, match=match):
            torch.ops.sqfx.qlinear_dynamic(torch.randn(1, 300), *args, 300, False, *tiled)


def test_repeated_row_in_row_perm_is_defined_and_caught_on_load():
    """A row named twice (so another never) is memory-safe and deterministic at the op (that
    row's outputs are 0), and validate_tiled rejects it."""
    from sqfx.format import PackedFormatError, validate_tiled

    p = random_packed(40, 300, (1, 4), 0.5, seed=5)
    tiled = [t.clone() for t in p.tiled()]
    lost = int(tiled[4][1])
    tiled[4][1] = tiled[4][0]
    y = op(p, torch.randn(2, 300), tiled=tiled)
    assert bool((y[:, lost] == 0).all())
    with pytest.raises(PackedFormatError, match="row_perm does not match"):
        validate_tiled(p.tensors()[:4], 300, tiled)


def test_pack_tiled_rejects_bad_weights():
    p = random_packed(8, 64, (1, 4), 0.0, seed=6)
    with pytest.raises(RuntimeError, match="for 1x4 blocks"):
        q = pack(torch.randn(8, 64), block=(2, 4))
        torch.ops.sqfx._pack_tiled(q.values, q.row_ptr, q.col_idx, q.w_scale, 64)
    col = p.col_idx.clone()
    col[1] = col[0]
    with pytest.raises(RuntimeError, match="increasing within each row"):
        torch.ops.sqfx._pack_tiled(p.values, p.row_ptr, col, p.w_scale, 64)
    col[1] = 99
    with pytest.raises(RuntimeError, match="increasing within each row"):
        torch.ops.sqfx._pack_tiled(p.values, p.row_ptr, col, p.w_scale, 64)


def test_module_derives_the_layout_and_keeps_it_out_of_the_state_dict():
    from sqfx.nn import SparseQuantLinear

    p = random_packed(48, 160, (1, 4), 0.8, seed=8)
    mod = SparseQuantLinear(p)
    assert not any("tiled" in k for k in mod.state_dict())  # files keep packed format v1
    fresh = SparseQuantLinear(random_packed(48, 160, (1, 4), 0.3, seed=9))
    fresh.load_state_dict(mod.state_dict())
    for name, t in zip(p.TILED_FIELDS, p.tiled()):
        assert torch.equal(getattr(fresh, f"tiled_{name}"), t)
    x = torch.randn(2, 160)
    assert torch.equal(fresh(x), reference.qlinear_dynamic(x, *p.tensors(), 160, False))


def test_exported_program_carries_a_checked_layout():
    from sqfx.artifacts import validate_program
    from sqfx.format import PackedFormatError

    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32))
    ep = sqfx.export(model, (torch.randn(3, 64),), sqfx.SparseQuantConfig(target_sparsity=0.8))
    calls = [n for n in ep.graph.nodes if n.target is torch.ops.sqfx.qlinear_dynamic.default]
    assert calls and all(len(n.args) == 14 for n in calls)  # every call passes the tiled layout
    validate_program(ep)
    x = torch.randn(3, 64)
    y = ep.module()(x)
    with torch.no_grad():
        eager = sqfx.prepare_and_convert(model, sqfx.SparseQuantConfig(target_sparsity=0.8),
                                         example_inputs=(x,))(x)
    assert torch.equal(y, eager)
    # tamper one lane's weight of the first layer's layout: memory-safe, but caught on load
    slot_w_name = calls[0].args[11].name
    spec = next(s for s in ep.graph_signature.input_specs if s.arg.name == slot_w_name)
    store = ep.state_dict if spec.target in ep.state_dict else ep.constants
    store[spec.target].view(-1)[0] += 1
    with pytest.raises(PackedFormatError, match="slot_w does not match"):
        validate_program(ep)
