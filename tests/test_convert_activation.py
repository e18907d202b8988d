"""Activation modes through prepare_and_convert: dynamic_int8, weight_only, and auto (calibrated)."""
import pytest
import torch
from torch import nn

import sqfx
from sqfx.config import ConfigError

QLINEAR = torch.ops.sqfx.qlinear_dynamic.default
QLINEAR_WO = torch.ops.sqfx.qlinear_weight_only.default


def _model():
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _ops(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function" and n.target in (QLINEAR, QLINEAR_WO)]


def test_weight_only_everywhere():
    model = _model()
    x = torch.randn(4, 32)
    conv = sqfx.prepare_and_convert(model, sqfx.SparseQuantConfig(activation="weight_only"))
    assert _ops(conv) == [QLINEAR_WO] * 3
    assert [l.activation for l in conv.sqfx_report.layers] == ["weight_only"] * 3
    # fp32 activations: only the int8 weight rounding is left.
    torch.testing.assert_close(conv(x), model(x), atol=2e-2, rtol=0)


def test_override_per_layer():
    cfg = sqfx.SparseQuantConfig(overrides={"2": {"activation": "weight_only"}})
    conv = sqfx.prepare_and_convert(_model(), cfg)
    assert _ops(conv) == [QLINEAR, QLINEAR_WO, QLINEAR]
    assert "weight_only" in str(conv.sqfx_report)


def test_auto_follows_the_calibration():
    torch.manual_seed(0)
    model = _model()
    x = torch.randn(64, 32)
    x[:, 5] = 400.0  # an outlier channel costs the first layer's uint8 activations resolution
    sens = sqfx.calibrate.activation_sensitivity(model, (x,))
    others = min(sens["2"].sqnr_dynamic_db, sens["4"].sqnr_dynamic_db)
    assert sens["0"].sqnr_dynamic_db < others
    threshold = (sens["0"].sqnr_dynamic_db + others) / 2
    cfg = sqfx.SparseQuantConfig(activation="auto", act_threshold_db=threshold)
    conv = sqfx.prepare_and_convert(model, cfg, example_inputs=(x,))
    assert {l.fqn: l.activation for l in conv.sqfx_report.layers} == {
        "0": "weight_only", "2": "dynamic_int8", "4": "dynamic_int8"}
    assert _ops(conv) == [QLINEAR_WO, QLINEAR, QLINEAR]


def test_auto_needs_example_inputs():
    with pytest.raises(ConfigError, match="example_inputs"):
        sqfx.prepare_and_convert(_model(), sqfx.SparseQuantConfig(activation="auto"))


def test_bad_activation_values():
    with pytest.raises(ConfigError, match="activation"):
        sqfx.SparseQuantConfig(activation="int4")
    with pytest.raises(ConfigError, match="activation"):
        sqfx.SparseQuantConfig(overrides={"0": {"activation": "fp8"}})
    with pytest.raises(ConfigError, match="act_threshold_db"):
        sqfx.SparseQuantConfig(act_threshold_db="high")
