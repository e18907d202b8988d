"""Fuzz: mutate valid packed params and check every case is either rejected with a Python
exception or computes exactly the right result. Never a crash, a hang or garbage.

"Right" is defined twice:
- params that pass `validate_packed` must give exactly `sqfx.reference.qlinear_dynamic`;
- params the op accepts although `validate_packed` rejects them (the op checks only what
  is O(row blocks): it cannot see unsorted or duplicate block columns, junk in the block
  padding, -128 weights or a wrong w_sum) must give exactly the *block model*: every
  stored block added at its place in the padded weight, the activation padding filled
  with the zero point. Any other result would mean a kernel read memory it should not.
The same params also go through `SparseQuantLinear.load_state_dict`, which must reject
them or load a module that computes the reference.

Both ops are fuzzed: `sqfx::qlinear_weight_only` (same packed weight, no w_sum, fp32
activations) must match its block model within float32 summation error (it is not bit-exact
by design) on both of its kernels (AVX2, and SQFX_WEIGHT_ONLY_KERNEL=generic); its cases keep
the input finite (NaN propagation across unstored blocks is its own open item).

Profiles (env SQFX_FUZZ_PROFILE): "ci" (default, 300 cases) and "long" (10,000 cases);
SQFX_FUZZ_EXAMPLES overrides the count. Run with --hypothesis-show-statistics to see how
the cases split between the outcomes.
"""
from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sqfx
from sqfx import PackedFormatError, SparseQuantLinear
from sqfx.format import validate_packed
from sqfx import reference

from sqfx_testing import OP, assert_same, random_packed

_PROFILES = {"ci": 300, "long": 10_000}
_PROFILE = os.environ.get("SQFX_FUZZ_PROFILE", "ci")
_EXAMPLES = int(os.environ.get("SQFX_FUZZ_EXAMPLES", _PROFILES[_PROFILE]))
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, derandomize=_PROFILE == "ci",
                     suppress_health_check=list(HealthCheck), database=None)

# Block shapes the fast kernels are likely to specialise, plus odd ones for the generic path.
BLOCKS = [(1, 1), (1, 4), (4, 4), (8, 1), (1, 16), (16, 16), (2, 8), (4, 16), (3, 5), (1, 64)]
REJECTED = (RuntimeError, ValueError, TypeError)
# Every kernel path this CPU can run, when the build exposes ISA forcing (sqfx.ops.force_isa).
ISAS = list(sqfx.ops.available_isas()) if hasattr(sqfx.ops, "available_isas") else ["auto"]


WO = torch.ops.sqfx.qlinear_weight_only
WO_KERNELS = ["avx2", "generic"]


@contextlib.contextmanager
def _weight_only_kernel(kernel):
    before = os.environ.get("SQFX_WEIGHT_ONLY_KERNEL")
    os.environ["SQFX_WEIGHT_ONLY_KERNEL"] = kernel
    try:
        yield
    finally:
        if before is None:
            del os.environ["SQFX_WEIGHT_ONLY_KERNEL"]
        else:
            os.environ["SQFX_WEIGHT_ONLY_KERNEL"] = before


def _kernel_path(isa):
    return sqfx.ops.force_isa(isa) if isa != "auto" else contextlib.nullcontext()
ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what both ops take (fp16/bf16: computed in fp32)
FIELDS = ("values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias")


def block_model(x, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu):
    """What a correct kernel computes for any params that pass the op's entry checks."""
    nnz, rb, cb = values.shape
    n, k = w_scale.numel(), in_features
    x2 = x.reshape(-1, k)
    if x2.shape[0] == 0:  # no rows: the kernel never runs, nothing is read
        return x.new_empty((*x.shape[:-1], n))
    q, a_scale, zp = reference.quantize_rows(x2)
    acc = torch.zeros(x2.shape[0], n, dtype=torch.int64)
    if nnz:
        n_rb, n_cb = -(-n // rb), -(-k // cb)
        q_pad = zp.long()[:, None].repeat(1, n_cb * cb)
        q_pad[:, :k] = q
        w_pad = torch.zeros(n_rb * rb, n_cb * cb, dtype=torch.int64)
        block_row = torch.repeat_interleave(torch.arange(n_rb), (row_ptr[1:] - row_ptr[:-1]).long())
        rows = (block_row[:, None] * rb + torch.arange(rb))[:, :, None].expand(nnz, rb, cb)
        cols = (col_idx.long()[:, None] * cb + torch.arange(cb))[:, None, :].expand(nnz, rb, cb)
        w_pad.index_put_((rows.reshape(-1), cols.reshape(-1)), values.long().reshape(-1), accumulate=True)
        # float64 is exact: |partial sums| < 2**53 at these sizes.
        acc = (q_pad.double() @ w_pad[:n].double().T).round().long()
    acc = acc - zp.long()[:, None] * w_sum.long()[None, :]
    y = acc.float() * (a_scale[:, None] * w_scale[None, :])
    if bias is not None:
        y = y + bias
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)
    return y.reshape(*x.shape[:-1], n)


def block_model_weight_only(x, values, row_ptr, col_idx, w_scale, bias, in_features, relu):
    """block_model for the weight-only op, in float64: (y, bound on |float32 error|)."""
    nnz, rb, cb = values.shape
    n, k = w_scale.numel(), in_features
    x2 = x.reshape(-1, k).double()
    if x2.shape[0] == 0:  # no rows: the kernel never runs, nothing is read
        empty = x.new_empty((*x.shape[:-1], n), dtype=torch.float64)
        return empty, empty
    if not nnz:  # an empty layer may claim any block shape: no memory backs it
        rb = cb = 1
    w_pad = torch.zeros(-(-n // rb) * rb, -(-k // cb) * cb, dtype=torch.float64)
    if nnz:
        n_rb = -(-n // rb)
        block_row = torch.repeat_interleave(torch.arange(n_rb), (row_ptr[1:] - row_ptr[:-1]).long())
        rows = (block_row[:, None] * rb + torch.arange(rb))[:, :, None].expand(nnz, rb, cb)
        cols = (col_idx.long()[:, None] * cb + torch.arange(cb))[:, None, :].expand(nnz, rb, cb)
        w_pad.index_put_((rows.reshape(-1), cols.reshape(-1)), values.double().reshape(-1), accumulate=True)
    w = w_pad[:n, :k]  # the activation padding is zero: columns past k add nothing
    scale = w_scale.double()[None, :]
    y = (x2 @ w.T) * scale
    bound = (x2.abs() @ w.abs().T) * scale * 1e-5 + 1e-30
    if bias is not None:
        y = y + bias.double()
        bound = bound + bias.double().abs() * 1e-6
    if relu:
        y = y.clamp_min(0)
    return y.reshape(*x.shape[:-1], n), bound.reshape(*x.shape[:-1], n)


def assert_close_weight_only(out, expected, bound):
    """Within the float32 error bound; NaN and infinities (from a NaN/Inf bias or a huge scale)
    in the same places."""
    assert out.shape == expected.shape and out.dtype == torch.float32, (out.shape, expected.shape)
    out = out.double()
    assert torch.equal(out.isnan(), expected.isnan()), "NaN positions differ"
    # Exact sums past float32's range overflow to an infinity of their sign (e.g. a huge w_scale);
    # those within the error bound of the range's edge may land either side of it.
    f32_max = torch.finfo(torch.float32).max
    overflow = (expected.abs() - bound) > f32_max
    expected = torch.where(overflow, expected.sign() * float("inf"), expected)
    special = expected.isinf() | ~bound.isfinite() | expected.isnan() | ((expected.abs() + bound) > f32_max)
    assert torch.equal(out[expected.isinf()], expected[expected.isinf()]), "infinities differ"
    err = (out - expected).abs()[~special]
    assert bool((err <= bound[~special]).all()), "weight-only result off past the float32 error bound"


# ---- mutations: each takes (draw, case dict) and edits the case in place ----

def _set_entry(t, draw, values):
    if t.numel() == 0:
        return t
    t = t.clone()
    t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(values)
    return t


def _int_like(t):
    info = torch.iinfo(t.dtype)
    return st.one_of(st.integers(-3, 3), st.integers(info.min, info.max),
                     st.sampled_from([info.min, info.max, -1]))


def m_col_idx_entry(draw, c):
    p = c["col_idx"]
    n_cb = -(-c["in_features"] // c["values"].shape[2])
    c["col_idx"] = _set_entry(p, draw, st.one_of(_int_like(p), st.integers(0, max(n_cb - 1, 0)),
                                                 st.sampled_from([n_cb, n_cb + 1, -n_cb])))


def m_col_idx_swap(draw, c):
    t = c["col_idx"]
    if t.numel() >= 2:
        i, j = draw(st.integers(0, t.numel() - 1)), draw(st.integers(0, t.numel() - 1))
        t = t.clone()
        t[i], t[j] = t[j].clone(), t[i].clone()
        c["col_idx"] = t


def m_row_ptr_entry(draw, c):
    c["row_ptr"] = _set_entry(c["row_ptr"], draw, st.one_of(
        _int_like(c["row_ptr"]), st.integers(0, c["values"].shape[0] + 1)))


def m_row_ptr_shift(draw, c):
    # Moves blocks between row blocks, keeping row_ptr monotone and its ends: accepted by
    # the op, so the kernel must follow the new row pointers exactly.
    rp = c["row_ptr"]
    if rp.numel() > 2:
        nnz = int(rp[-1])
        inner = sorted(draw(st.lists(st.integers(0, nnz), min_size=rp.numel() - 2, max_size=rp.numel() - 2)))
        c["row_ptr"] = torch.tensor([0, *inner, nnz], dtype=torch.int32)


def _prod(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def m_length(draw, c):
    name = draw(st.sampled_from(FIELDS))
    t = c[name]
    if t is None:
        return
    how = draw(st.sampled_from(["drop", "add", "empty"]))
    if how == "add" and t.dim() and t[:1].numel() == 0 and _prod(t.shape[1:]) > 4096:
        return  # would allocate an unbacked block from m_unbacked_block
    if how == "drop" and t.shape[0]:
        c[name] = t[:-1].contiguous()
    elif how == "add":
        c[name] = torch.cat([t, t[:1] if t.shape[0] else torch.zeros((1, *t.shape[1:]), dtype=t.dtype)])
    else:
        c[name] = t[:0].contiguous()


def m_dtype(draw, c):
    name = draw(st.sampled_from(FIELDS))
    if c[name] is None:
        return
    dtype = draw(st.sampled_from([torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
                                  torch.float16, torch.float32, torch.float64, torch.bool]))
    c[name] = c[name].to(dtype)


def m_rank(draw, c):
    name = draw(st.sampled_from(FIELDS))
    t = c[name]
    if t is None:
        return
    how = draw(st.sampled_from(["unsqueeze", "flatten", "scalar"]))
    c[name] = t.unsqueeze(0) if how == "unsqueeze" else (t.reshape(-1) if how == "flatten" else t.reshape(-1)[:1].reshape(()) if t.numel() else t.sum())


def m_block_shape(draw, c):
    # Reinterprets the same int8 bytes with another block shape.
    v = c["values"]
    nnz, rb, cb = v.shape
    size = rb * cb
    if size > 4096:  # an unbacked block from m_unbacked_block
        return
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    new_rb = draw(st.sampled_from(divisors))
    c["values"] = v.reshape(nnz, new_rb, size // new_rb)


def m_unbacked_block(draw, c):
    # An empty values tensor may claim any block shape: no memory backs it.
    big = st.sampled_from([1, 2, 17, 2**20, 2**31, 2**40])
    c["values"] = torch.empty(0, draw(big), draw(big), dtype=torch.int8)
    if draw(st.booleans()):
        c["col_idx"] = c["col_idx"][:0].contiguous()
        c["row_ptr"] = torch.zeros_like(c["row_ptr"])


def m_values_entry(draw, c):
    c["values"] = _set_entry(c["values"], draw, st.integers(-128, 127))


def m_w_scale(draw, c):
    c["w_scale"] = _set_entry(c["w_scale"], draw, st.one_of(
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -1.0, 1e-45, 3e38]),
        st.floats(1e-6, 10.0)))


def m_w_sum(draw, c):
    c["w_sum"] = _set_entry(c["w_sum"], draw, _int_like(c["w_sum"]))


def m_bias(draw, c):
    n = c["w_scale"].numel()
    c["bias"] = draw(st.sampled_from([None, "nan", "randn"]))
    if c["bias"] == "nan":
        c["bias"] = torch.full((n,), float("nan"))
    elif c["bias"] == "randn":
        c["bias"] = torch.randn(n)


def m_in_features(draw, c):
    k = draw(st.one_of(st.integers(-2, c["in_features"] + 20), st.sampled_from([2**31, 2**62, 2**63 - 1])))
    c["in_features"] = k
    if draw(st.booleans()) and 0 < k <= 4096:  # keep the input consistent with it
        x = c["x"]
        c["x"] = torch.cat([x, torch.randn(*x.shape[:-1], k)], dim=-1)[..., :k].contiguous() if k > x.shape[-1] else x[..., :k]


def m_non_contiguous(draw, c):
    name = draw(st.sampled_from(FIELDS + ("x",)))
    t = c[name]
    if t is None or t.numel() < 2:
        return
    c[name] = torch.stack([t, t], dim=-1)[..., 0]  # same values, stride 2 in the last dim


def m_not_a_tensor(draw, c):
    name = draw(st.sampled_from(FIELDS))
    c[name] = draw(st.sampled_from([None, [1, 2], 3]))


def m_input(draw, c):
    x = c["x"]
    how = draw(st.sampled_from(["double", "int", "half", "bfloat16", "scalar", "transpose", "expand", "nan"]))
    if how == "double":
        c["x"] = x.double()
    elif how == "int":
        c["x"] = x.int()
    elif how == "half":
        c["x"] = x.half()
    elif how == "bfloat16":
        c["x"] = x.bfloat16()
    elif how == "scalar":
        c["x"] = x.reshape(-1)[:1].reshape(()) if x.numel() else torch.tensor(1.0)
    elif how == "transpose":
        c["x"] = x.reshape(-1, x.shape[-1]).t().contiguous().t()
    elif how == "expand":
        c["x"] = x.reshape(-1, x.shape[-1])[:1].expand(3, x.shape[-1]) if x.numel() else x
    elif x.numel():
        c["x"] = _set_entry(x, draw, st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e-44]))


MUTATIONS = [m_col_idx_entry, m_col_idx_swap, m_row_ptr_entry, m_row_ptr_shift, m_length, m_dtype,
             m_rank, m_block_shape, m_unbacked_block, m_values_entry, m_w_scale, m_w_sum, m_bias,
             m_in_features, m_non_contiguous, m_not_a_tensor, m_input]


@st.composite
def cases(draw):
    block = draw(st.sampled_from(BLOCKS))
    n, k = draw(st.integers(1, 40)), draw(st.integers(1, 80))
    p = random_packed(n, k, block, sparsity=draw(st.sampled_from([1.0, 0.7, 0.3, 0.0])),
                      bias=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                      per_channel=draw(st.booleans()))
    if draw(st.booleans()):
        p.col_idx = p.col_idx.int()  # both index widths are valid
    lead = draw(st.sampled_from([(), (0,), (1,), (3,), (2, 5), (17,)]))
    op = draw(st.sampled_from(["dynamic", "weight_only"]))
    c = dict(zip(FIELDS, p.tensors()), in_features=k, x=torch.randn(*lead, k), relu=draw(st.booleans()),
             op=op, isa=draw(st.sampled_from(ISAS if op == "dynamic" else WO_KERNELS)))
    applied = []
    for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3]))):
        mutation = draw(st.sampled_from(MUTATIONS))
        try:
            mutation(draw, c)
        except (AttributeError, IndexError, ValueError, TypeError, RuntimeError):
            continue  # the mutation does not apply after an earlier one (e.g. a None tensor)
        applied.append(mutation.__name__)
    return c, applied


def _is_valid(c):
    tensors = [c[f] for f in FIELDS]
    weight_only = c["op"] == "weight_only"
    if weight_only:
        tensors[FIELDS.index("w_sum")] = None  # the weight-only op reads no w_sum
    try:
        validate_packed(*tensors, in_features=c["in_features"], weight_only=weight_only,
                        out_features=int(c["w_scale"].numel()) if isinstance(c["w_scale"], torch.Tensor) else -1)
        return True
    except PackedFormatError:
        return False


def _check_load(c):
    """The same params through load_state_dict: rejected, or loaded and exact."""
    if not all(isinstance(c[f], torch.Tensor) for f in FIELDS if f != "bias"):
        return
    n = int(c["w_scale"].numel())
    mod = SparseQuantLinear(random_packed(3, 5, (1, 4), seed=0))
    sd = {"values": c["values"], "row_ptr": c["row_ptr"], "col_idx": c["col_idx"],
          "w_scale": c["w_scale"], "w_sum": c["w_sum"],
          "_extra_state": {"format_version": 1, "in_features": c["in_features"], "out_features": n,
                           "per_channel": True, "relu": c["relu"],
                           "act_mode": "weight_only" if c["op"] == "weight_only" else "dynamic_int8"}}
    if c["bias"] is not None:
        sd["fp32_bias"] = c["bias"]
    # load_state_dict takes contiguous copies, so strided tensors are fine there.
    # (the module stores w_sum in either mode, so it is validated as for the dynamic op)
    valid = _is_valid({**{f: (c[f].contiguous() if isinstance(c[f], torch.Tensor) else c[f]) for f in c},
                       "op": "dynamic"})
    try:
        mod.load_state_dict(sd)
    except (RuntimeError, PackedFormatError):
        assert not valid, "load_state_dict rejected params that validate_packed accepts"
        return
    assert valid, "load_state_dict accepted params that validate_packed rejects"
    x = c["x"]
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.dim() >= 1 \
            and x.shape[-1] == c["in_features"]:
        if c["op"] == "weight_only":
            p = mod.packed
            expected, bound = block_model_weight_only(x, p.values, p.row_ptr, p.col_idx, p.w_scale, p.bias,
                                                      c["in_features"], c["relu"])
            assert_close_weight_only(mod(x), expected, bound)
        else:
            assert_same(mod(x), reference.qlinear_dynamic(x, *mod.packed.tensors(), c["in_features"], c["relu"]))


@pytest.mark.slow
@_SETTINGS
@given(cases())
def test_fuzz_packed_params(case):
    c, applied = case
    event(f"{c['op']} kernel path {c['isa']}")
    if c["op"] == "weight_only":
        x = c["x"]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            c["x"] = torch.nan_to_num(x, nan=0.5, posinf=2.0, neginf=-2.0)
        with _weight_only_kernel(c["isa"]):
            _check_case(c)
        return
    with _kernel_path(c["isa"]):
        _check_case(c)


def _call(c):
    if c["op"] == "weight_only":
        return WO(c["x"], c["values"], c["row_ptr"], c["col_idx"], c["w_scale"], c["bias"], c["in_features"], c["relu"])
    return OP(c["x"], *(c[f] for f in FIELDS), c["in_features"], c["relu"])


def _check_case(c):
    valid = _is_valid(c)
    try:
        out = _call(c)
    except REJECTED as e:
        event("rejected by the op")
        x = c["x"]
        good_input = (isinstance(x, torch.Tensor) and x.dtype in ACTIVATION_DTYPES and x.dim() >= 1
                      and x.shape[-1] == c["in_features"])
        assert not (valid and good_input), f"the op rejected valid params: {e}"
        assert "sqfx" in str(e) or "qlinear_" in str(e) or "expected" in str(e).lower(), str(e)
        _check_load(c)
        return
    event("accepted, valid" if valid else "accepted by the op, rejected by validate_packed")
    if c["x"].dtype != torch.float32:
        # fp16 / bf16 activations: exactly the float32 call on the upcast input, rounded back.
        c = dict(c, x=c["x"].float())
        out32 = _call(c)
        assert_same(out, out32.to(out.dtype))
        out = out32
    if c["op"] == "weight_only":
        expected, bound = block_model_weight_only(c["x"], c["values"], c["row_ptr"], c["col_idx"], c["w_scale"],
                                                  c["bias"], c["in_features"], c["relu"])
        assert_close_weight_only(out, expected, bound)
        _check_load(c)
        return
    expected = block_model(c["x"], *(c[f] for f in FIELDS), c["in_features"], c["relu"])
    assert_same(out, expected)
    if valid:
        assert_same(out, reference.qlinear_dynamic(c["x"], *(c[f] for f in FIELDS), c["in_features"], c["relu"]))
    _check_load(c)
