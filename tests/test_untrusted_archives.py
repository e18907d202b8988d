"""Tampered .pt2 archives (issue 13): what plain torch.export.load lets through must still be
refused by the op at run time, and sqfx.load must refuse it before torch touches it."""
from __future__ import annotations

import pytest
import torch

import sqfx
import sqfx.archive
from _pt2_edit import Archive, exported_mlp, is_packed_tensor_name, layer_fqns


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
    name = sorted(k for k in program.state_dict if is_packed_tensor_name(k, tensor))[-1]  # the last layer: no ReLU after it
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


# ---- sqfx.load inspects the archive before torch reads it (issue 13.2) ----

class _TouchOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _pickle_bomb(marker) -> bytes:
    import pickle
    return pickle.dumps(_TouchOnUnpickle(marker))


def _refused(path, message):
    with pytest.raises(sqfx.archive.UnsafeArchiveError, match=message):
        sqfx.load(path)


def test_pickled_weight_record_is_refused_before_torch_unpickles_it(tmp_path):
    path, x, _ = exported_mlp(tmp_path)
    archive = Archive(path)
    fqn = layer_fqns(archive, "w_scale")[0]
    archive.records[archive.record_of(fqn)] = _pickle_bomb(tmp_path / "ran")
    archive.edit_meta(fqn, lambda e: e.update(use_pickle=True))
    archive.write(tmp_path / "pickle.pt2")
    _refused(tmp_path / "pickle.pt2", "use_pickle True: torch would unpickle")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(Exception):
        torch.export.load(tmp_path / "pickle.pt2")  # torch runs the pickle (then fails on its result)
    assert (tmp_path / "ran").exists()


def test_pickled_sample_inputs_are_refused(tmp_path):
    path, x, _ = exported_mlp(tmp_path)
    archive = Archive(path)
    archive.records["data/sample_inputs/model.pt"] = _pickle_bomb(tmp_path / "ran")
    archive.write(tmp_path / "inputs.pt2")
    _refused(tmp_path / "inputs.pt2", "sample_inputs/model.pt: needs the unsafe unpickler")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("edit,message", [
    # A 0-byte record claiming 8 GiB: torch allocates (and zeroes) the claimed size.
    (lambda a, f: (a.records.__setitem__(a.record_of(f), b""),
                   a.edit_meta(f, lambda e: e["tensor_meta"].update(sizes=[{"as_int": 2**33}], strides=[{"as_int": 1}]))),
     "holds 0 bytes, but entry .* needs 8589934592"),
    (lambda a, f: a.records.__setitem__(a.record_of(f), a.records[a.record_of(f)][:-1]),
     "truncated or oversized"),
    (lambda a, f: a.edit_meta(f, lambda e: e["tensor_meta"].update(strides=[{"as_int": -1}, {"as_int": 1}, {"as_int": 1}])),
     "strides must be a concrete integer >= 0"),
    (lambda a, f: a.edit_meta(f, lambda e: e["tensor_meta"].update(strides=[{"as_int": 1}])),
     "needs as many strides as sizes"),
    (lambda a, f: a.edit_meta(f, lambda e: e["tensor_meta"].update(requires_grad=True)),
     "requires_grad True for dtype torch.int8"),
    (lambda a, f: a.edit_meta(f, lambda e: e["tensor_meta"]["device"].update(type="meta")),
     "has device .*meta.*CPU only"),
    (lambda a, f: a.edit_meta(f, lambda e: e["tensor_meta"].update(dtype=99)),
     "unknown dtype"),
    (lambda a, f: a.records.__setitem__("data/aotinductor/model/evil.so", b"\x7fELF"),
     "compiled code"),
    (lambda a, f: a.records.__setitem__("data/weights/model.pt", b"legacy"),
     "legacy weights that torch unpickles"),
])
@pytest.mark.parametrize("activation", ["dynamic_int8", "weight_only"])
def test_sqfx_load_names_what_it_refuses(tmp_path, activation, edit, message):
    path, x, _ = exported_mlp(tmp_path, activation)
    archive = Archive(path)
    edit(archive, layer_fqns(archive, "values")[1])
    archive.write(tmp_path / "bad.pt2")
    _refused(tmp_path / "bad.pt2", message)


def test_symbolic_expression_that_would_run_python_is_refused(tmp_path):
    from torch.export import Dim
    from torch import nn

    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    ep = sqfx.export(model, (torch.randn(3, 16),), dynamic_shapes=({0: Dim("batch")},))
    sqfx.save(ep, tmp_path / "dyn.pt2")
    assert torch.equal(sqfx.load(tmp_path / "dyn.pt2").module()(torch.ones(5, 16)), ep.module()(torch.ones(5, 16)))
    archive = Archive(tmp_path / "dyn.pt2")
    text = archive.records["models/model.json"].decode()
    assert "Symbol('s" in text
    marker = tmp_path / "ran"
    evil = f"__import__('pathlib').Path('{marker}').touch()"
    start = text.index('"expr_str": "') + len('"expr_str": "')
    end = text.index('"', start)
    archive.records["models/model.json"] = (text[:start] + evil + text[end:]).encode()
    archive.write(tmp_path / "expr.pt2")
    _refused(tmp_path / "expr.pt2", "symbolic expression")
    assert not marker.exists()
