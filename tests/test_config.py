"""SparseQuantConfig: validation with clear errors, layer selection, per-layer overrides."""
import re

import pytest
from torch import nn

import sqfx
from sqfx.config import ConfigError, SparseQuantConfig, as_config


@pytest.mark.parametrize("kwargs, message", [
    ({"block": (0, 4)}, "block must be two positive ints"),
    ({"block": 4}, "block must be a pair"),
    ({"block": (1.5, 4)}, "block must be two positive ints"),
    ({"target_sparsity": 1.0}, r"target_sparsity must be None or a number in \[0, 1\)"),
    ({"target_sparsity": "half"}, "target_sparsity"),
    ({"prune_norm": "l3"}, r"prune_norm must be one of \['l1', 'l2'\]"),
    ({"per_channel": "yes"}, "per_channel must be a bool"),
    ({"activation": "static_int8"}, r"activation must be one of \['dynamic_int8'\]"),
    ({"filter_fn": 3}, "filter_fn must be callable"),
    ({"include": [3]}, "include entries must be"),
    ({"min_features": -1}, "min_features must be a non-negative int"),
    ({"overrides": {"fc*": {"blok": (1, 8)}}}, r"overrides\['fc\*'\] has unknown field\(s\) \['blok'\]"),
    ({"overrides": {"fc*": {"block": (1, 0)}}}, r"overrides\['fc\*'\].block"),
    ({"overrides": {nn.Linear: {"block": (1, 8)}}}, "keys must be names or regexes"),
    ({"masks": {"fc": [1, 0]}}, "masks must map fqn strings to tensors"),
    ({"observer": 3}, "observer must be a torch.ao observer"),
    ({"on_unstructured_mask": "ignore"}, "on_unstructured_mask must be one of"),
])
def test_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SparseQuantConfig(**kwargs)


def test_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['sparsity'\]"):
        SparseQuantConfig.from_dict({"sparsity": 0.5})
    with pytest.raises(TypeError):
        SparseQuantConfig(sparsity=0.5)
    with pytest.raises(ConfigError, match="must be a SparseQuantConfig"):
        as_config(42)
    assert as_config({"block": [2, 2]}).block == (2, 2)


def test_selection():
    cfg = SparseQuantConfig(include=["enc.*", re.compile(r"head\d")], exclude=["enc.1.*"], min_features=64)
    assert cfg.skip_reason("enc.0.fc", None, 16, 16) is None
    assert cfg.skip_reason("enc.1.fc", None, 16, 16) == "excluded"
    assert cfg.skip_reason("head1", None, 16, 16) is None
    assert cfg.skip_reason("head", None, 16, 16) == "not included"
    assert "min_features" in cfg.skip_reason("enc.0.fc", None, 4, 4)
    by_type = SparseQuantConfig(exclude=[nn.Linear])
    assert by_type.skip_reason("x", nn.Linear(2, 2)) == "excluded"
    assert by_type.skip_reason("x", None) is None
    fn = SparseQuantConfig(filter_fn=lambda m, fqn: fqn != "b")
    assert fn.skip_reason("b") == "filter_fn returned False"


def test_overrides_resolve_in_order():
    cfg = SparseQuantConfig(block=(1, 4), overrides={
        "enc.*": {"block": (2, 2), "target_sparsity": 0.5},
        re.compile(r"enc\.0\..*"): {"block": (1, 8), "per_channel": False},
        "head": {"skip": True},
    })
    s = cfg.settings_for("enc.0.fc")
    assert (s.block, s.target_sparsity, s.per_channel) == ((1, 8), 0.5, False)
    assert cfg.settings_for("enc.1.fc").block == (2, 2)
    assert cfg.settings_for("other").block == (1, 4)
    assert cfg.skip_reason("head") == "skipped by override"


def test_overrides_apply_in_conversion():
    net = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    cfg = SparseQuantConfig(overrides={"1": {"block": (2, 8), "target_sparsity": 0.5, "per_channel": False}})
    rep = sqfx.prepare_and_convert(net, cfg).sqfx_report
    assert rep["0"].block == (1, 4) and rep["1"].block == (2, 8)
    assert rep["1"].sparsity == 0.5 and rep["1"].scheme.startswith("int8 per_tensor")
