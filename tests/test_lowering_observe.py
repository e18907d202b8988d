"""Weight observers: sqfx's min-max symmetric ones and torch.ao observers / qconfigs."""
import pytest
import torch
from torch import nn
from torch.ao.quantization import (MinMaxObserver, PerChannelMinMaxObserver, QConfig,
                                   default_dynamic_quant_observer)

import sqfx
from sqfx_testing import packed_layer
from sqfx.lowering import MinMaxSymmetricObserver, weight_scales


def test_sqfx_observer_per_channel_and_tensor():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]])
    s, pc = weight_scales(w, None, True, "l")
    assert pc and torch.equal(s, torch.tensor([2.0, 0.5, 1.0]) / torch.tensor(127.0) * torch.tensor([1, 1, 127.0]))
    s, pc = weight_scales(w, None, False, "l")
    assert not pc and torch.equal(s, torch.full((3,), 2.0 / 127))
    obs = MinMaxSymmetricObserver()
    with pytest.raises(RuntimeError, match="observe a weight"):
        obs.calculate_qparams()


def test_torch_ao_per_channel_observer_and_qconfig():
    w = torch.randn(6, 8)
    obs = PerChannelMinMaxObserver.with_args(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    s, pc = weight_scales(w, obs, True, "l")
    expected = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    expected(w)
    assert pc and torch.equal(s, expected.calculate_qparams()[0].float())
    qconfig = QConfig(activation=default_dynamic_quant_observer, weight=obs)
    s2, _ = weight_scales(w, qconfig, True, "l")
    assert torch.equal(s, s2)
    inst = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
    s3, pc3 = weight_scales(w, inst, True, "l")
    assert not pc3 and bool((s3 == s3[0]).all())
    assert inst.min_val.numel() == 0 or torch.isinf(inst.min_val)  # the user's instance is not touched


def test_non_zero_zero_point_rejected():
    obs = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    net = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        net[0].weight.add_(1.0)  # all positive: an affine observer picks a non-zero zero point
    with pytest.raises(ValueError, match=r"layer '0'.*non-zero zero point"):
        sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(observer=obs))


def test_wrong_dtype_and_axis_rejected():
    with pytest.raises(ValueError, match="must produce int8"):
        weight_scales(torch.randn(4, 4), MinMaxObserver.with_args(dtype=torch.quint8), True, "l")
    obs = PerChannelMinMaxObserver.with_args(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    with pytest.raises(ValueError, match="ch_axis=0"):
        weight_scales(torch.randn(4, 6), obs, True, "l")


def test_observer_scales_reach_the_packed_layer():
    net = nn.Sequential(nn.Linear(8, 4))
    obs = PerChannelMinMaxObserver.with_args(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(observer=obs))
    expected = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    expected(net[0].weight.detach())
    assert torch.equal(packed_layer(out, "0").w_scale, expected.calculate_qparams()[0].float())
