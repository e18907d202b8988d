"""Per-layer activation mode choice from a calibration run (sqfx.calibrate)."""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import sqfx
from sqfx.calibrate import activation_sensitivity, apply_activation_modes, choose_activation_modes


class OutlierNet(nn.Module):
    """`smooth` sees well-behaved inputs; `spiky` sees rows where one feature is 1000x the rest."""

    def __init__(self):
        super().__init__()
        self.smooth = nn.Linear(64, 64)
        self.spiky = nn.Linear(64, 32)
        self.unused = nn.Linear(8, 8)
        with torch.no_grad():  # as in LLM outlier features, the outlier's own weights are small
            self.spiky.weight[:, 0] = 0.0

    def forward(self, x):
        h = self.smooth(x)
        h = h + torch.nn.functional.one_hot(torch.zeros(h.shape[:-1], dtype=torch.long), 64) * 1000.0
        return self.spiky(h)


@pytest.fixture
def net():
    torch.manual_seed(0)
    return OutlierNet().eval()


def convert(model, modes):
    import copy

    model = copy.deepcopy(model)
    for fqn in ("smooth", "spiky"):
        setattr(model, fqn, sqfx.SparseQuantLinear.from_float(getattr(model, fqn), act_mode=modes.get(fqn, "dynamic_int8")))
    return model


def test_outlier_layer_gets_weight_only(net):
    x = torch.randn(16, 64)
    sens = activation_sensitivity(net, (x,))
    assert set(sens) == {"smooth", "spiky"}  # `unused` never ran: no evidence
    assert sens["spiky"].sqnr_dynamic_db < 30 < sens["smooth"].sqnr_dynamic_db
    assert sens["spiky"].input_peak_ratio > 2 * sens["smooth"].input_peak_ratio  # <= sqrt(64) = 8
    assert sens["smooth"].rows == 16
    modes = choose_activation_modes(net, (x,))
    assert modes == {"smooth": "dynamic_int8", "spiky": "weight_only", "unused": "dynamic_int8"}
    # The choice pays: the output error drops against the all-dynamic conversion.
    with torch.inference_mode():
        ref = net(x)
        err_auto = (convert(net, modes)(x) - ref).norm()
        err_dyn = (convert(net, {})(x) - ref).norm()
    assert err_auto < 0.5 * err_dyn


def test_threshold_extremes_and_default(net):
    x = torch.randn(4, 64)
    assert set(choose_activation_modes(net, x, threshold_db=-math.inf).values()) == {"dynamic_int8"}
    modes = choose_activation_modes(net, {"x": x}, threshold_db=math.inf, default="weight_only")
    assert set(modes.values()) == {"weight_only"}
    with pytest.raises(ValueError, match="default activation mode"):
        choose_activation_modes(net, x, default="int4")
    with pytest.raises(ValueError, match="threshold_db"):
        choose_activation_modes(net, x, threshold_db="high")


def test_duck_typed_config_selects_layers_and_blocks(net):
    seen = []

    def settings_for(fqn):
        seen.append(fqn)
        return SimpleNamespace(block=(2, 8), per_channel=False)

    config = SimpleNamespace(skip_reason=lambda fqn, m, i, o: None if fqn == "spiky" else "excluded",
                             settings_for=settings_for, masks={})
    modes = choose_activation_modes(net, torch.randn(4, 64), config)
    assert modes == {"spiky": "weight_only"} and seen == ["spiky"]


def test_masks_are_honoured(net):
    import copy

    x = torch.randn(8, 64)
    mask = torch.rand(32, 16) > 0.5
    sens = activation_sensitivity(net, x, masks={"spiky": mask}, names=["spiky"])
    assert set(sens) == {"spiky"}
    pruned = copy.deepcopy(net)
    with torch.no_grad():
        pruned.spiky.weight.mul_(mask.repeat_interleave(4, 1))
    same = activation_sensitivity(pruned, x, names=["spiky"])["spiky"]
    assert sens["spiky"].sqnr_dynamic_db == pytest.approx(same.sqnr_dynamic_db, rel=1e-9)
    assert sens["spiky"].sqnr_dynamic_db != activation_sensitivity(net, x, names=["spiky"])["spiky"].sqnr_dynamic_db


def test_apply_activation_modes(net):
    model = convert(net, {})
    apply_activation_modes(model, {"spiky": "weight_only"})
    assert model.spiky.act_mode == "weight_only" and model.smooth.act_mode == "dynamic_int8"
    with pytest.raises(ValueError, match="must be one of"):
        apply_activation_modes(model, {"spiky": "fp8"})
    with pytest.raises(KeyError, match="no layer 'nope'"):
        apply_activation_modes(model, {"nope": "weight_only"})
    with pytest.raises(TypeError, match="not a SparseQuantLinear"):
        apply_activation_modes(model, {"unused": "weight_only"})
