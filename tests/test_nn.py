"""sqfx.SparseQuantLinear: the module surface, state_dict round trips and validation on load."""
import io

import pytest
import torch
from torch import nn

import sqfx
from sqfx.format import PackedFormatError
from sqfx_testing import random_block_mask


def _module(n=12, k=20, block=(1, 4), sparsity=0.5, bias=True, relu=False):
    lin = nn.Linear(k, n, bias=bias)
    mask = random_block_mask(n, k, block, sparsity)
    return sqfx.SparseQuantLinear.from_float(lin, mask=mask, block=block, relu=relu), lin, mask


def test_from_float_matches_op_and_reference():
    mod, lin, _ = _module()
    x = torch.randn(3, 4, 20)
    y = mod(x)
    p = mod.packed
    assert torch.equal(y, sqfx.reference.qlinear_dynamic(x, *p.tensors(), 20, False))
    assert y.shape == (3, 4, 12)


def test_weight_and_bias_accessors():
    mod, lin, mask = _module(bias=True)
    assert torch.equal(mod.bias(), lin.bias.detach())
    assert mod.weight().shape == lin.weight.shape
    mod2, _, _ = _module(bias=False)
    assert mod2.bias() is None


def test_repr():
    mod, _, _ = _module(n=12, k=20, sparsity=0.6)
    assert repr(mod) == ("SparseQuantLinear(in_features=20, out_features=12, block=1x4, "
                         "sparsity=0.600, scheme=int8_per_channel, relu=False)")


def test_linear_relu_fused_from_intrinsic():
    from torch.ao.nn.intrinsic import LinearReLU

    lin = nn.Linear(8, 8)
    mod = sqfx.SparseQuantLinear.from_float(LinearReLU(lin, nn.ReLU()))
    assert mod.relu
    x = torch.randn(4, 8)
    assert bool((mod(x) >= 0).all())


def test_set_weight_bias():
    mod, _, _ = _module()
    w = torch.randn(12, 20)
    mod.set_weight_bias(w, None)
    assert mod.bias() is None and mod.packed.nnz_blocks == 12 * 5
    torch.testing.assert_close(mod.weight(), w, atol=w.abs().max().item() / 127, rtol=0)


def test_state_dict_roundtrip_weights_only():
    mod, _, _ = _module(sparsity=0.7, relu=True)
    buf = io.BytesIO()
    torch.save(mod.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    other, _, _ = _module(sparsity=0.1, bias=False)  # different nnz and no bias
    other.load_state_dict(sd)
    x = torch.randn(5, 20)
    assert torch.equal(other(x), mod(x))
    assert other.relu and other.packed.nnz_blocks == mod.packed.nnz_blocks


def test_state_dict_in_a_parent_module():
    mod, _, _ = _module()
    parent = nn.Sequential(nn.Identity(), mod)
    sd = parent.state_dict()
    assert "1._extra_state" in sd and "1.values" in sd
    fresh = nn.Sequential(nn.Identity(), _module(sparsity=0.9)[0])
    fresh.load_state_dict(sd)
    x = torch.randn(2, 20)
    assert torch.equal(fresh(x), parent(x))


def test_corrupt_state_dict_rejected():
    mod, _, _ = _module()
    sd = mod.state_dict()
    sd["col_idx"] = sd["col_idx"] + 100
    with pytest.raises(RuntimeError, match="col_idx"):
        _module()[0].load_state_dict(sd)


def test_wrong_format_version_rejected():
    mod, _, _ = _module()
    sd = mod.state_dict()
    sd["_extra_state"] = dict(sqfx.SparseQuantLinear.extra_state_fields(sd["_extra_state"]), format_version=99)
    with pytest.raises(PackedFormatError, match="format version"):
        _module()[0].load_state_dict(sd)


def test_missing_keys_reported():
    mod, _, _ = _module()
    sd = mod.state_dict()
    del sd["w_sum"]
    with pytest.raises(RuntimeError, match="w_sum"):
        _module()[0].load_state_dict(sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_inputs_computed_in_fp32(dtype):
    mod, _, _ = _module()
    x = torch.randn(3, 20)
    y = mod(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), mod(x.to(dtype).float()), atol=1e-2, rtol=1e-2)


def test_integer_input_rejected():
    mod, _, _ = _module()
    with pytest.raises(TypeError, match="floating point"):
        mod(torch.ones(2, 20, dtype=torch.int64))


def test_from_float_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Linear"):
        sqfx.SparseQuantLinear.from_float(nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize("act_mode", ["dynamic_int8", "weight_only"])
def test_forward_same_in_every_autograd_mode(act_mode):
    # The eager forward skips the op's autograd kernel when nothing needs a gradient (fixed cost):
    # the same values in every mode, and a gradient-requiring input or buffer still gets an output
    # whose backward is refused.
    layer = sqfx.SparseQuantLinear.from_float(nn.Linear(24, 12), act_mode=act_mode)
    x = torch.randn(3, 24)
    want = layer(x)
    assert not want.requires_grad
    with torch.no_grad():
        assert torch.equal(layer(x), want)
    with torch.inference_mode():
        assert torch.equal(layer(x), want)
    for needs_grad in ("input", "bias"):
        if needs_grad == "bias":
            layer.fp32_bias.requires_grad_(True)
            y = layer(x)
        else:
            y = layer(x.clone().requires_grad_(True))
        assert y.requires_grad and torch.equal(y.detach(), want)
        with pytest.raises(RuntimeError, match="inference-only"):
            y.sum().backward()
