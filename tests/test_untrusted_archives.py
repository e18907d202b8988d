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


def _tamper_col_idx(t):
    t[1] = t[0]  # a duplicate block column: in range, so the op itself cannot see it


def _tamper_values(t):
    t.view(-1)[t.view(-1).ne(0).nonzero()[0]] = -128


def _tamper_row_ptr(t):
    t[1:-1] = t[-1]  # every block moved to row block 0


@pytest.mark.parametrize("tensor,tamper,message", [
    ("col_idx", _tamper_col_idx, "col_idx must be strictly increasing"),
    ("values", _tamper_values, r"values must lie in \[-127, 127\]"),
    ("row_ptr", _tamper_row_ptr, "row_ptr gives a row block more than"),
])
def test_sqfx_load_validates_weight_only_layers(tmp_path, tensor, tamper, message):
    path, x, expected = exported_mlp(tmp_path, "weight_only")
    program = torch.export.load(path)
    name = sorted(k for k in program.state_dict if k.endswith("_" + tensor))[-1]  # the last layer: no ReLU after it
    tamper(program.state_dict[name])
    torch.export.save(program, tmp_path / "bad.pt2")
    # The op accepts the tampered layer (memory-safe), and the output silently changes:
    assert not torch.equal(torch.export.load(tmp_path / "bad.pt2").module()(x), expected)
    with pytest.raises(sqfx.PackedFormatError, match=f"{message}.*in the program's call qlinear_weight_only"):
        sqfx.load(tmp_path / "bad.pt2")


@pytest.mark.parametrize("activation", ["dynamic_int8", "weight_only"])
def test_values_at_storage_offset_one_compute_the_same_output(tmp_path, activation):
    # Issue 13.6: an int8 record read from byte 1 gives values at an odd address (UBSan flagged
    # the kernels' int32 loads); the op copies it to aligned memory.
    path, x, expected = exported_mlp(tmp_path, activation)
    archive = Archive(path)
    for fqn in layer_fqns(archive, "values"):
        record = archive.record_of(fqn)
        archive.records[record] = b"\x00" + archive.records[record]
        archive.edit_meta(fqn, lambda e: e["tensor_meta"].update(storage_offset={"as_int": 1}))
    archive.write(tmp_path / "offset.pt2")
    for load in (torch.export.load, sqfx.load):
        program = load(tmp_path / "offset.pt2")
        assert all(program.state_dict[f].data_ptr() % 2 == 1 for f in layer_fqns(archive, "values"))
        assert torch.equal(program.module()(x), expected)
