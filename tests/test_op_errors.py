"""Every door for packed params rejects bad ones with a Python exception naming the tensor:
the op entry (O(row blocks) checks), pack, validate_packed and load_state_dict; plus bad
user input to the module API."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sqfx
from sqfx import PackedFormatError, SparseQuantLinear
from sqfx.format import PackedLinear, validate_packed

from sqfx_testing import OP, assert_same, call_op, call_reference, random_packed

N, K, BLOCK = 10, 18, (4, 4)  # neither divides: padding in both dims


@pytest.fixture
def packed():
    p = random_packed(N, K, BLOCK, sparsity=0.4, seed=1)
    assert p.nnz_blocks > 2
    return p


def _args(p):
    return dict(values=p.values, row_ptr=p.row_ptr, col_idx=p.col_idx, w_scale=p.w_scale,
                w_sum=p.w_sum, bias=p.bias)


def _call(x=None, in_features=K, relu=False, **tensors):
    x = torch.randn(3, K) if x is None else x
    return OP(x, tensors["values"], tensors["row_ptr"], tensors["col_idx"], tensors["w_scale"],
              tensors["w_sum"], tensors["bias"], in_features, relu)


def _mutated(p, name, new):
    args = _args(p)
    args[name] = new
    return args


def _rp(p, i, v):
    r = p.row_ptr.clone()
    r[i] = v
    return r


def _ci(p, i, v):
    c = p.col_idx.clone()
    c[i] = v
    return c


def _set(t, i, v):
    t = t.clone()
    t[i] = v
    return t


def _ws(p, v):
    w = p.w_scale.clone()
    w[3] = v
    return w


# (tensor name, mutation, regex the op's message must match)
OP_CASES = [
    ("values", lambda p: p.values.to(torch.int16), r"values must have dtype"),
    ("values", lambda p: p.values.reshape(p.nnz_blocks, -1), r"values must be 3-D"),
    ("values", lambda p: p.values.transpose(1, 2), r"values must be contiguous"),
    ("values", lambda p: torch.empty(0, 0, 4, dtype=torch.int8), r"non-positive block size"),
    ("values", lambda p: p.values[:-1].contiguous(), r"col_idx has \d+ entries, values has"),
    ("row_ptr", lambda p: p.row_ptr.long(), r"row_ptr must have dtype"),
    ("row_ptr", lambda p: p.row_ptr[:-1].contiguous(), r"row_ptr has \d+ entries"),
    ("row_ptr", lambda p: _rp(p, 0, 1), r"row_ptr\[0\] must be 0"),
    ("row_ptr", lambda p: _rp(p, 1, -5), r"row_ptr must be non-decreasing"),
    ("row_ptr", lambda p: _rp(p, 1, 2**31 - 1), r"row_ptr must be non-decreasing"),
    ("row_ptr", lambda p: _rp(p, -1, p.nnz_blocks + 1), r"row_ptr\[-1\] = \d+ must equal"),
    ("row_ptr", lambda p: p.row_ptr.reshape(1, -1), r"row_ptr must be 1-D"),
    ("col_idx", lambda p: p.col_idx.long(), r"col_idx must be int16 or int32"),
    ("col_idx", lambda p: p.col_idx.float(), r"col_idx must be int16 or int32"),
    ("col_idx", lambda p: p.col_idx[:-1].contiguous(), r"col_idx has \d+ entries"),
    ("col_idx", lambda p: _ci(p, 0, -1), r"col_idx holds a block column index outside"),
    ("col_idx", lambda p: _ci(p, -1, p.n_col_blocks), r"col_idx holds a block column index outside"),
    ("col_idx", lambda p: _ci(p, 0, 32767), r"col_idx holds a block column index outside"),
    ("col_idx", lambda p: _ci(p.__class__(**{**p.__dict__, "col_idx": p.col_idx.int()}), 1, -2**31),
     r"col_idx holds a block column index outside"),
    ("col_idx", lambda p: p.col_idx.repeat_interleave(2)[::2], r"col_idx must be contiguous"),
    ("w_scale", lambda p: p.w_scale.double(), r"w_scale must have dtype"),
    ("w_scale", lambda p: _ws(p, float("nan")), r"w_scale must be finite and positive"),
    ("w_scale", lambda p: _ws(p, float("inf")), r"w_scale must be finite and positive"),
    ("w_scale", lambda p: _ws(p, 0.0), r"w_scale must be finite and positive"),
    ("w_scale", lambda p: _ws(p, -1.0), r"w_scale must be finite and positive"),
    ("w_scale", lambda p: p.w_scale[:-1].contiguous(), r"(w_sum|row_ptr|bias) has \d+ entries"),
    ("w_sum", lambda p: p.w_sum.long(), r"w_sum must have dtype"),
    ("w_sum", lambda p: p.w_sum[:-1].contiguous(), r"w_sum has \d+ entries"),
    ("w_sum", lambda p: _set(p.w_sum, 2, -2**31), r"w_sum\[2\] = -2147483648 cannot be a row sum"),
    ("w_sum", lambda p: _set(p.w_sum, 0, 127 * K + 1), r"w_sum\[0\] = 2287 cannot be a row sum"),
    ("bias", lambda p: p.bias.double(), r"bias must have dtype"),
    ("bias", lambda p: p.bias[:-1].contiguous(), r"bias has \d+ entries"),
    ("bias", lambda p: p.bias.repeat_interleave(2)[::2], r"bias must be contiguous"),
    ("bias", lambda p: p.bias[None], r"bias must be 1-D"),
]


@pytest.mark.parametrize("name,mutate,message", OP_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OP_CASES)])
def test_op_rejects_bad_packed(packed, name, mutate, message):
    with pytest.raises(RuntimeError, match=message):
        _call(**_mutated(packed, name, mutate(packed)))
    # The full validator rejects the same tensors, naming the same tensor.
    args = _mutated(packed, name, mutate(packed))
    with pytest.raises(PackedFormatError):
        validate_packed(**args, in_features=K, out_features=N)


def test_op_rejects_bad_input_and_in_features(packed):
    args = _args(packed)
    with pytest.raises(RuntimeError, match="input has 17 features in its last dim.*in_features = 18"):
        _call(x=torch.randn(2, K - 1), **args)
    with pytest.raises(RuntimeError, match="input must be float32"):
        _call(x=torch.randn(2, K).double(), **args)
    with pytest.raises(RuntimeError, match="input must be float32"):
        _call(x=torch.randint(0, 5, (2, K)), **args)
    with pytest.raises(RuntimeError, match="input must have at least 1 dim"):
        _call(x=torch.tensor(1.0), in_features=1, **_args(random_packed(3, 1, (1, 4), seed=2)))
    for bad in (0, -3):
        with pytest.raises(RuntimeError, match="in_features must be positive"):
            _call(x=torch.randn(2, K), in_features=bad, **args)
    # in_features decides the row_ptr length check through n_col_blocks only; a mismatch
    # with the input is caught first.
    with pytest.raises(RuntimeError, match="features in its last dim"):
        _call(x=torch.randn(2, K), in_features=K + 4, **args)


def test_op_rejects_in_features_that_would_overflow():
    # Crafted: in_features near INT64_MAX with an empty input. Used to overflow the
    # ceil division (signed overflow, UB); now a clean error.
    big = 2**63 - 1
    x = torch.empty_strided((0, big), (1, 1))
    with pytest.raises(RuntimeError, match="overflows int64"):
        OP(x, torch.empty(0, 1, 4, dtype=torch.int8), torch.zeros(3, dtype=torch.int32),
           torch.empty(0, dtype=torch.int16), torch.ones(2), torch.zeros(2, dtype=torch.int32),
           None, big, False)


def test_op_on_meta_and_mixed_devices_does_not_touch_memory(packed):
    # Meta tensors go to the fake kernel: shapes only, no data read.
    x = torch.randn(3, K, device="meta")
    out = OP(x, *(t.to("meta") for t in packed.tensors()), K, False)
    assert out.device.type == "meta" and out.shape == (3, N)


@pytest.mark.parametrize("name", ["values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias"])
def test_validate_packed_rejects_non_tensors_and_wrong_device(packed, name):
    args = _args(packed)
    args[name] = args[name].tolist()
    with pytest.raises(PackedFormatError, match=f"{name} must be a tensor"):
        validate_packed(**args, in_features=K, out_features=N)
    args = _args(packed)
    args[name] = args[name].to("meta")
    with pytest.raises(PackedFormatError, match=f"{name} must be on the CPU"):
        validate_packed(**args, in_features=K, out_features=N)


def _values_with(p, fn):
    v = p.values.clone()
    fn(v)
    return v


FULL_ONLY_CASES = [  # invariants only the O(nnz) validator sees (the op cannot check cheaply)
    ("col_idx", lambda p: _ci(p, 1, int(p.col_idx[0])) if p.row_ptr[1] > 1 else None,
     "strictly increasing"),
    ("values", lambda p: _values_with(p, lambda v: v.view(-1)[0].fill_(-128)), r"\[-127, 127\]"),
    ("w_sum", lambda p: p.w_sum + 1, "row sums"),
]


@pytest.mark.parametrize("name,mutate,message", FULL_ONLY_CASES, ids=[c[0] for c in FULL_ONLY_CASES])
def test_validate_packed_full_checks(name, mutate, message):
    p = random_packed(N, K, BLOCK, sparsity=0.0, seed=3)
    bad = mutate(p)
    assert bad is not None
    with pytest.raises(PackedFormatError, match=f"{name} .*{message}"):
        validate_packed(**_mutated(p, name, bad), in_features=K, out_features=N)


def test_validate_packed_rejects_padding_weights_and_too_many_blocks():
    p = random_packed(N, K, BLOCK, sparsity=0.0, seed=4)
    v = p.values.clone()
    v[-1, -1, -1] = 5  # last block: row 11 >= N = 10 is padding
    with pytest.raises(PackedFormatError, match="values holds non-zero weights in the padding"):
        validate_packed(**_mutated(p, "values", v), in_features=K, out_features=N)
    v = p.values.clone()
    last_col = int(p.row_ptr[1]) - 1  # last block of row block 0 is in the last block column
    v[last_col, 0, -1] = 5  # column 19 >= K = 18
    with pytest.raises(PackedFormatError, match="values holds non-zero weights in the padding"):
        validate_packed(**_mutated(p, "values", v), in_features=K, out_features=N)
    # in_features must be an int, not a bool or float
    for bad in (True, 18.0, 0, -1):
        with pytest.raises(PackedFormatError, match="in_features must be a positive int"):
            validate_packed(**_args(p), in_features=bad, out_features=N)


def test_validate_packed_unbacked_huge_block_is_cheap():
    # values [0, 2**31, 2**31] holds no memory; the old validator built a dense padded
    # copy of 2**62 bytes. Now it is checked in O(nnz) and the op clamps the block.
    values = torch.empty(0, 2**31, 2**31, dtype=torch.int8)
    row_ptr = torch.zeros(2, dtype=torch.int32)
    col_idx = torch.empty(0, dtype=torch.int16)
    w_scale, w_sum, bias = torch.ones(5), torch.zeros(5, dtype=torch.int32), torch.arange(5.0)
    validate_packed(values, row_ptr, col_idx, w_scale, w_sum, bias, in_features=7, out_features=5)
    out = OP(torch.randn(3, 7), values, row_ptr, col_idx, w_scale, w_sum, bias, 7, False)
    assert torch.equal(out, bias.expand(3, 5))


# ---- load_state_dict ----

def _module(p, relu=False):
    return SparseQuantLinear(p, relu=relu)


def test_load_state_dict_round_trip_and_resparsify():
    a = _module(random_packed(N, K, BLOCK, sparsity=0.7, seed=5))
    b = _module(random_packed(N, K, BLOCK, sparsity=0.1, seed=6), relu=True)
    assert a.values.shape != b.values.shape
    a.load_state_dict(b.state_dict())
    x = torch.randn(4, K)
    assert torch.equal(a(x), b(x)) and a.relu


def test_load_state_dict_accepts_strided_tensors_as_contiguous_copies():
    b = _module(random_packed(N, K, BLOCK, sparsity=0.1, seed=6))
    sd = b.state_dict()
    sd["w_scale"] = sd["w_scale"].repeat_interleave(2)[::2]
    assert not sd["w_scale"].is_contiguous()
    a = _module(random_packed(N, K, BLOCK, sparsity=0.8, seed=7))
    a.load_state_dict(sd)
    assert a.w_scale.is_contiguous()
    x = torch.randn(2, K)
    assert torch.equal(a(x), b(x))
    sd["w_scale"].fill_(123.0)  # the module owns its copy
    assert torch.equal(a(x), b(x))


def _corrupt(sd, key, fn):
    sd = dict(sd)
    sd[key] = fn(sd[key])
    return sd


_fields = SparseQuantLinear.extra_state_fields

LOAD_CASES = [
    ("values", lambda t: t.to(torch.int32), "values must have dtype"),
    ("values", lambda t: t[:-1], "row_ptr ends at"),
    ("row_ptr", lambda t: t.flip(0), "row_ptr must start at 0"),
    ("row_ptr", lambda t: t[:-1], "row_ptr has"),
    ("col_idx", lambda t: t + 100, "col_idx holds a block column outside"),
    ("col_idx", lambda t: t - 100, "col_idx holds a block column outside"),
    ("w_scale", lambda t: t * float("nan"), "w_scale must be finite and positive"),
    ("w_scale", lambda t: -t, "w_scale must be finite and positive"),
    ("w_sum", lambda t: t + 1, "w_sum does not equal"),
    ("fp32_bias", lambda t: t[:3], "bias has 3 entries"),
    ("fp32_bias", lambda t: "not a tensor", "bias must be a tensor"),
    ("_extra_state", lambda s: {**_fields(s), "format_version": 99}, "format version"),
    ("_extra_state", lambda s: {**_fields(s), "in_features": K - 1}, "padding"),
    ("_extra_state", lambda s: {**_fields(s), "in_features": K - 4}, "col_idx holds a block column outside"),
    ("_extra_state", lambda s: {**_fields(s), "out_features": "10"}, "out_features"),
    ("_extra_state", lambda s: {k: v for k, v in _fields(s).items() if k != "relu"}, "relu"),
    ("_extra_state", lambda s: [1], "format version"),
    # the tensor form (what get_extra_state writes): version, flags and act_mode codes
    ("_extra_state", lambda s: torch.cat([torch.tensor([99]), s[1:]]), "format version"),
    ("_extra_state", lambda s: torch.cat([s[:4], torch.tensor([2]), s[5:]]), "'relu' must be a bool"),
    ("_extra_state", lambda s: torch.cat([s[:5], torch.tensor([7])]), "unknown act_mode"),
    ("_extra_state", lambda s: s[:5], "int64 tensor of 6 fields"),
    ("_extra_state", lambda s: s.int(), "int64 tensor of 6 fields"),
]


@pytest.mark.parametrize("key,fn,message", LOAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LOAD_CASES)])
def test_load_state_dict_rejects_corrupt(key, fn, message):
    src = _module(random_packed(N, K, BLOCK, sparsity=0.3, seed=8))
    dst = _module(random_packed(N, K, BLOCK, sparsity=0.6, seed=9))
    before = {k: v.clone() for k, v in dst.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises((RuntimeError, PackedFormatError), match=message):
        dst.load_state_dict(_corrupt(src.state_dict(), key, fn))
    # A rejected load leaves the module as it was, and it still works.
    for k, v in before.items():
        assert torch.equal(dst.state_dict()[k], v)
    x = torch.randn(2, K)
    assert_same(dst(x), call_reference(dst.packed, x))


def test_load_state_dict_missing_keys():
    src = _module(random_packed(N, K, BLOCK, seed=8))
    dst = _module(random_packed(N, K, BLOCK, seed=9))
    sd = src.state_dict()
    del sd["col_idx"]
    with pytest.raises(RuntimeError, match="Missing key.*col_idx"):
        dst.load_state_dict(sd)
    sd = src.state_dict()
    del sd["_extra_state"]
    with pytest.raises(RuntimeError, match="Missing key.*_extra_state"):
        dst.load_state_dict(sd)


# ---- module / format API: bad user input ----

@pytest.mark.parametrize("n,k,block", [(10, 18, (4, 4)), (7, 5, (8, 1)), (3, 3, (1, 16)), (33, 65, (16, 16))])
def test_blocks_that_do_not_divide_are_padded(n, k, block):
    p = random_packed(n, k, block, sparsity=0.3, seed=10)
    p.validate()
    x = torch.randn(5, k)
    assert_same(call_op(p, x), call_reference(p, x))
    assert_same(call_op(p, x, relu=True), call_reference(p, x, relu=True))


def test_bad_masks_and_blocks():
    w = torch.randn(8, 12)
    with pytest.raises(ValueError, match="mask for weight has shape"):
        sqfx.pack(w, mask=torch.ones(8, 11), block=(1, 4))
    with pytest.raises(ValueError, match="real 2-D"):
        sqfx.pack(w, mask=torch.ones(8, 12, 1), block=(1, 4))
    with pytest.raises(ValueError, match="real 2-D"):
        sqfx.pack(w, mask=torch.ones(8, 12, dtype=torch.complex64), block=(1, 4))
    with pytest.raises(TypeError, match="mask for weight must be a tensor"):
        sqfx.pack(w, mask=[[1] * 12] * 8, block=(1, 4))
    with pytest.raises(ValueError, match="not block-structured"):
        m = torch.ones(8, 12)
        m[0, 0] = 0
        sqfx.pack(w, mask=m, block=(1, 4))
    for block in [(0, 4), (1, -1), (1,), "1x4", None]:
        with pytest.raises(ValueError, match="block"):
            sqfx.pack(w, block=block)
    # Masks of any real dtype are accepted (nonzero = kept), float or int or bool.
    for dtype in (torch.bool, torch.int64, torch.float16):
        p = sqfx.pack(w, mask=torch.ones(8, 3, dtype=dtype), block=(1, 4))
        assert p.nnz_blocks == 24


def test_bad_weights():
    for w in (torch.randn(0, 4), torch.randn(4, 0)):
        with pytest.raises(ValueError, match="empty shape"):
            sqfx.pack(w)
    with pytest.raises(ValueError, match="2-D"):
        sqfx.pack(torch.randn(4))
    with pytest.raises(ValueError, match="floating point"):
        sqfx.pack(torch.ones(4, 4, dtype=torch.int32))
    w = torch.randn(4, 4)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        sqfx.pack(w)
    with pytest.raises(ValueError, match="scales must be"):
        sqfx.pack(torch.randn(4, 4), scales=torch.tensor([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="bias has"):
        sqfx.pack(torch.randn(4, 4), bias=torch.randn(3))
    with pytest.raises(TypeError, match="expects nn.Linear"):
        SparseQuantLinear.from_float(nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_weights_and_inputs(dtype):
    lin = nn.Linear(24, 12).to(dtype)
    m = SparseQuantLinear.from_float(lin, block=(4, 4))
    assert m.w_scale.dtype == torch.float32 and m.values.dtype == torch.int8
    x = torch.randn(3, 5, 24).to(dtype)
    y = m(x)
    assert y.dtype == dtype and y.shape == (3, 5, 12)
    # Computed in fp32, then cast back: exactly the fp32 path on the converted input.
    assert torch.equal(y, call_reference(m.packed, x.float()).to(dtype))


def test_module_half_keeps_packed_buffers_exact():
    m = SparseQuantLinear.from_float(nn.Linear(16, 8), block=(1, 4))
    before = {k: v.clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}
    for convert in (lambda mod: mod.half(), lambda mod: mod.to(torch.bfloat16), lambda mod: mod.double()):
        convert(m)
        for k, v in before.items():
            got = m.state_dict()[k]
            assert got.dtype == v.dtype and torch.equal(got, v), k
    x = torch.randn(2, 16, dtype=torch.float16)
    assert m(x).dtype == torch.float16


def test_module_on_other_device_and_bad_inputs():
    m = SparseQuantLinear.from_float(nn.Linear(16, 8), block=(1, 4))
    with pytest.raises(TypeError, match="floating point input"):
        m(torch.ones(2, 16, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="in_features = 16"):
        m(torch.randn(2, 15))
    with pytest.raises(RuntimeError, match="CPU only; the input is on meta"):
        m(torch.randn(2, 16, device="meta"))
    m.to("meta")
    with pytest.raises(RuntimeError, match="packed weight is on meta"):
        m(torch.randn(2, 16))


def test_backward_is_refused_clearly():
    m = SparseQuantLinear.from_float(nn.Linear(16, 8), block=(1, 4))
    x = torch.randn(2, 16, requires_grad=True)
    y = m(x)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference-only"):
        y.sum().backward()
    with torch.no_grad():
        assert not m(x).requires_grad


def test_strided_and_expanded_inputs():
    p = random_packed(12, 20, (4, 4), seed=11)
    base = torch.randn(20, 6)
    for x in (base.t(), torch.randn(1, 20).expand(7, 20), torch.randn(3, 40)[:, ::2],
              torch.randn(2, 3, 20).transpose(0, 1), torch.randn(20)):
        assert not x.is_contiguous() or x.dim() == 1
        assert_same(call_op(p, x), call_reference(p, x.contiguous()))


# ---- exported programs ----

@pytest.mark.parametrize("tensor,mutate,message", [
    ("col_idx", lambda t: t.fill_(1000), "col_idx holds a block column outside"),
    ("w_sum", lambda t: t.add_(1), "w_sum does not equal"),
    ("w_scale", lambda t: t.fill_(float("nan")), "w_scale must be finite"),
])
def test_sqfx_load_validates_packed_constants(tmp_path, tensor, mutate, message):
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(3, 16)
    ep = sqfx.export(model, (x,))
    sqfx.save(ep, tmp_path / "ok.pt2")
    loaded = sqfx.load(tmp_path / "ok.pt2")
    assert torch.equal(loaded.module()(x), ep.module()(x))
    keys = [k for k in ep.state_dict if k.endswith(tensor)]
    assert len(keys) == 2
    mutate(ep.state_dict[keys[1]])
    sqfx.save(ep, tmp_path / "bad.pt2")
    with pytest.raises(PackedFormatError, match=f"{message}.*in the program's call"):
        sqfx.load(tmp_path / "bad.pt2")


# The weight-only op shares the op entry checks (csrc/packed_checks.cpp) with qlinear_dynamic.
def _weight_only(p, x, **changes):
    args = dict(values=p.values, row_ptr=p.row_ptr, col_idx=p.col_idx, w_scale=p.w_scale, bias=p.bias)
    args.update(changes)
    return torch.ops.sqfx.qlinear_weight_only(x, args["values"], args["row_ptr"], args["col_idx"],
                                              args["w_scale"], args["bias"], p.in_features, False)


@pytest.mark.parametrize("changes,message", [
    (lambda p: {"w_scale": torch.full_like(p.w_scale, float("nan"))}, r"w_scale must be finite and positive"),
    (lambda p: {"values": None}, r"values must be a tensor, got None"),
    (lambda p: {"row_ptr": p.row_ptr.flip(0).contiguous()}, r"row_ptr"),
    (lambda p: {"col_idx": torch.full_like(p.col_idx, 10**4)}, r"block column index outside"),
    (lambda p: {"values": torch.empty(0, 1, 2**40, dtype=torch.int8),
                "row_ptr": torch.zeros(p.out_features + 1, dtype=torch.int32),
                "col_idx": torch.empty(0, dtype=torch.int16)}, None),
])
def test_weight_only_op_entry_checks(changes, message):
    p = random_packed(9, 13, (1, 4), 0.3)
    x = torch.randn(3, 13)
    if message is None:  # an empty layer claiming a huge block: no huge scratch, bias out
        assert torch.equal(_weight_only(p, x, **changes(p)), p.bias.expand(3, 9))
        return
    with pytest.raises(RuntimeError, match=message):
        _weight_only(p, x, **changes(p))


# ---- hardening round 2 (issue 13) ----

@pytest.mark.parametrize("op", ["qlinear_dynamic", "qlinear_weight_only"])
@pytest.mark.parametrize("which", [0, 1, 2, 3, 5, "input"])
def test_mixed_meta_and_cpu_tensors_raise_instead_of_returning_garbage(op, which):
    # One meta tensor sends the call to the fake kernel, which used to return an
    # uninitialized CPU tensor for a CPU input.
    p = list(sqfx.pack(torch.randn(64, 22), bias=torch.randn(64)).tensors())
    x = torch.randn(100, 22)
    if which == "input":
        x = x.to("meta")
    else:
        p[which] = p[which].to("meta")
    args = p if op == "qlinear_dynamic" else p[:4] + p[5:]
    with pytest.raises(RuntimeError, match=r"is on (meta|cpu) but input is on (cpu|meta)"):
        getattr(torch.ops.sqfx, op)(x, *args, 22, False)
    # Directly through the fake kernel (what torch.compile / torch.export trace) as well.
    fake = sqfx.ops._qlinear_dynamic_fake if op == "qlinear_dynamic" else sqfx.ops._qlinear_weight_only_fake
    with pytest.raises(RuntimeError, match="every tensor of the call must be on the same device"):
        fake(x, *args, 22, False)


def _wrapping_row_ptr_layer():
    """row_ptr whose int32 differences wrap around to small positive counts: each is at most
    n_col_blocks and they end at nnz, but as int64 they sum to 2**32 + nnz blocks."""
    imax, imin = 2**31 - 1, -2**31
    return dict(values=torch.ones(1, 1, 4, dtype=torch.int8),
                row_ptr=torch.tensor([0, imax, imin + 1, -1, 1], dtype=torch.int32),
                col_idx=torch.tensor([0], dtype=torch.int16), w_scale=torch.ones(4),
                w_sum=torch.tensor([0, 0, 0, 4], dtype=torch.int32), bias=None), 2**40, 4


def test_validate_packed_row_ptr_that_wraps_in_int32_is_refused_cheaply():
    # Used to pass the checks and make repeat_interleave ask for 32 GiB.
    tensors, k, n = _wrapping_row_ptr_layer()
    with pytest.raises(PackedFormatError, match="row_ptr must be non-decreasing"):
        validate_packed(**tensors, in_features=k, out_features=n)
    with pytest.raises(PackedFormatError, match="row_ptr must be non-decreasing"):
        PackedLinear(**tensors, in_features=k, out_features=n).validate()
    mod = SparseQuantLinear(random_packed(3, 5, (1, 4), 0.5))
    state = {"values": tensors["values"], "row_ptr": tensors["row_ptr"], "col_idx": tensors["col_idx"],
             "w_scale": tensors["w_scale"], "w_sum": tensors["w_sum"],
             "_extra_state": {"format_version": 1, "in_features": k, "out_features": n,
                              "per_channel": True, "relu": False}}
    with pytest.raises(RuntimeError, match="row_ptr must be non-decreasing"):
        mod.load_state_dict(state)


_PEAK_SCRIPT = """
import resource, torch
from sqfx.format import PackedLinear, validate_packed
n, n_cb = 1024, 4096  # 1x4 blocks, all stored: values 16 MiB
values = torch.ones(n * n_cb, 1, 4, dtype=torch.int8)
col_idx = torch.arange(n_cb, dtype=torch.int16).repeat(n)
row_ptr = torch.arange(0, n * n_cb + 1, n_cb, dtype=torch.int32)
w_sum = torch.full((n,), 4 * n_cb, dtype=torch.int32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
validate_packed(values, row_ptr, col_idx, torch.ones(n), w_sum, None, in_features=4 * n_cb, out_features=n)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before) / values.numel())
"""


def test_validate_packed_peak_memory_on_1x4_blocks_stays_below_twice_values():
    # Used to peak at ~25x the size of values (int64 index tensors per weight).
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True)
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio < 2.0, f"validate_packed peaked at {ratio:.1f}x the size of values"


def _at_odd_address(t):
    """The same values in memory that starts one byte past an aligned address."""
    raw = torch.empty(t.numel() * t.element_size() + 1, dtype=torch.uint8)
    view = raw[1:].view(t.dtype).view(t.shape) if t.element_size() == 1 else \
        torch.frombuffer(memoryview(raw.numpy())[1:], dtype=t.dtype).view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 2 == 1
    return view, raw


@pytest.mark.parametrize("name", ["values", "x", "w_scale", "row_ptr"])
@pytest.mark.parametrize("block,layout", [((1, 4), "sparse"), ((1, 4), "dense"), ((8, 1), "sparse")])
def test_tensors_at_odd_addresses_compute_the_reference(name, block, layout):
    # Issue 13.6: the kernels load int32 words from values (UBSan: misaligned load when a .pt2
    # gives values storage_offset 1); the op copies such tensors to aligned memory first.
    p = sqfx.pack(torch.randn(24, 40), block=block, layout=layout, bias=torch.randn(24))
    x = torch.randn(6, 40)
    expected = call_reference(p, x)
    keep = []
    if name == "x":
        x, raw = _at_odd_address(x)
    else:
        moved, raw = _at_odd_address(getattr(p, name))
        setattr(p, name, moved)
    keep.append(raw)
    for isa in sqfx.ops.available_isas():
        with sqfx.ops.force_isa(isa):
            for rows in (1, 6):
                assert_same(call_op(p, x[:rows]), expected[:rows])


@pytest.mark.parametrize("call", [
    lambda p, x: OP(x, p.values, p.row_ptr.flip(0).contiguous(), p.col_idx, p.w_scale, p.w_sum, p.bias, 13, False),
    lambda p, x: OP(x, p.values, p.row_ptr, torch.full_like(p.col_idx, 999), p.w_scale, p.w_sum, p.bias, 13, False),
    lambda p, x: torch.ops.sqfx.qlinear_weight_only(x, p.values, p.row_ptr, torch.full_like(p.col_idx, 999),
                                                    p.w_scale, p.bias, 13, False),
    lambda p, x: torch.ops.sqfx._set_kernel_isa("no-such-isa"),
    # the tiled layout's checks (csrc/qlinear_dynamic.cpp) and _kernel_for's
    lambda p, x: OP(x, *p.tensors(), 13, False, *(t[:-1] if i == 0 else t for i, t in enumerate(p.tiled()))),
    lambda p, x: torch.ops.sqfx._pack_tiled(p.values, p.row_ptr, p.col_idx.flip(0).contiguous(), p.w_scale, 13),
    lambda p, x: p.kernel_for(-1),
])
def test_op_messages_name_the_problem_without_build_machine_paths(call):
    p = random_packed(9, 13, (1, 4), 0.3)
    with pytest.raises(RuntimeError) as info:
        call(p, torch.randn(3, 13))
    message = str(info.value)
    assert message.startswith("sqfx"), message  # not "qlinear_dynamic, /path/to/csrc/...cpp:42, "
    assert ".cpp" not in message and "csrc" not in message, message


_SCRATCH_SCRIPT = """
import torch, sqfx
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
cb = 1 << 22  # one 1 x 4M block (4 MiB of values) for a layer with in_features = 4
values = torch.zeros(1, 1, cb, dtype=torch.int8)
values[0, 0, :4] = torch.tensor([1, 2, 3, 4], dtype=torch.int8)
args = (values, torch.tensor([0, 1], dtype=torch.int32), torch.zeros(1, dtype=torch.int16),
        torch.ones(1), torch.tensor([10], dtype=torch.int32), None, 4, False)
x = torch.ones(16, 4)
before = rss()
y = torch.ops.sqfx.qlinear_dynamic(x, *args)  # 16 rows x 4 Mi padded columns of scratch
print((rss() - before) / 2**20, float(y[0, 0]))
"""


@pytest.mark.skipif("libasan" in __import__("os").environ.get("LD_PRELOAD", ""),
                    reason="ASan keeps freed memory in quarantine: RSS cannot show the release")
def test_scratch_of_a_crafted_wide_block_is_released_after_the_call():
    # Issue 13.7: the thread-local activation scratch (M x padded in_features bytes) only grew,
    # so one call on a crafted wide block kept 64 MiB per thread for the rest of the process.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SCRATCH_SCRIPT], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    kept_mib, y = (float(v) for v in out.stdout.split())
    assert kept_mib < 24, f"the call left {kept_mib:.0f} MiB of scratch behind"


@pytest.mark.parametrize("in_features", [2**63, 2**70])
def test_extra_state_in_features_past_int64_is_a_clear_load_error(in_features):
    # 2**63 used to load and fail in forward ("Expected a value of type 'int' ... found type
    # 'int'"), 2**70 with a bare OverflowError.
    mod = SparseQuantLinear(random_packed(3, 5, (1, 4), 0.5))
    state = mod.state_dict()
    state["_extra_state"] = {**SparseQuantLinear.extra_state_fields(state["_extra_state"]), "in_features": in_features}
    with pytest.raises(PackedFormatError, match="'in_features' must be a positive int that fits int64"):
        SparseQuantLinear(random_packed(3, 5, (1, 4), 0.5)).load_state_dict(state)
    with pytest.raises(PackedFormatError, match="in_features must be a positive int that fits int64"):
        validate_packed(*mod.packed.tensors(), in_features=in_features, out_features=3)
