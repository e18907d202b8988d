"""Tampered .pt2 archives (issue 13): what plain torch.export.load lets through must still be
refused by the op at run time, and sqfx.load must refuse it before torch touches it."""
from __future__ import annotations

import pytest
import torch

import sqfx
from _pt2_edit import Archive, exported_mlp, layer_fqns


@pytest.mark.parametrize("activation", ["dynamic_int8", "weight_only"])
@pytest.mark.parametrize("tensor", ["values", "w_scale", "bias"])
def test_meta_device_edit_is_refused_at_run_time_after_plain_torch_export_load(tmp_path, activation, tensor):
    path, x, _ = exported_mlp(tmp_path, activation)
    archive = Archive(path)
    archive.edit_meta(layer_fqns(archive, tensor)[1], lambda e: e["tensor_meta"]["device"].update(type="meta"))
    archive.write(tmp_path / "meta.pt2")
    program = torch.export.load(tmp_path / "meta.pt2")  # torch itself does not object
    with pytest.raises(RuntimeError, match="is on meta but input is on cpu"):
        program.module()(x)
