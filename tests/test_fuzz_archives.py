"""Fuzz: tampered .pt2 archives through both loaders (issue 13).

Each case edits a valid archive (an sqfx model in dynamic-int8 or weight-only mode): the
weights-config metadata of a record (dtype, sizes, strides, storage offset, device,
requires_grad, use_pickle, is_param, path_name, layout), the bytes of a record (truncated,
emptied, extended, one byte changed: packed values, indices, row pointers, scales, sums),
or the archive itself (records added or removed, JSON configs cut).

- `sqfx.load` must refuse it with a Python exception (UnsafeArchiveError, PackedFormatError,
  RuntimeError), or load a program whose every sqfx layer computes the reference (bit-exact
  for qlinear_dynamic, within float32 summation error for qlinear_weight_only) on every kernel
  path, and whose whole forward runs. It must never let the process grow by more than 4x
  the file size (+ a fixed 64 MiB for torch's own deserializer), however large the sizes
  the archive claims.
- plain `torch.export.load` is run too, except on archives sqfx.load refused for a reason
  that is torch's own hole (a pickle, code, a claimed size that torch would allocate, a
  symbolic expression): whatever it loads, the op must refuse at run time or compute the
  block model of the params it was given (tests/test_fuzz_packed.py).

Profiles as in test_fuzz_packed.py: SQFX_FUZZ_PROFILE=ci (default, 40 cases) or long (10,000);
SQFX_FUZZ_EXAMPLES overrides; SQFX_FUZZ_PLAIN_EVERY=n replays only every n-th case through
torch.export.load (default 1: all).
"""
from __future__ import annotations

import collections
import os
import resource

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import sqfx
import sqfx.archive
from sqfx import PackedFormatError, reference
from sqfx.format import validate_packed

from sqfx_testing import assert_same
from _pt2_edit import WEIGHTS_CONFIG, Archive, exported_mlp
from test_fuzz_packed import (ISAS, WO_KERNELS, _kernel_path, _weight_only_kernel, assert_close_weight_only,
                              block_model, block_model_weight_only)

_PROFILES = {"ci": 40, "long": 10_000}
_PROFILE = os.environ.get("SQFX_FUZZ_PROFILE", "ci")
_EXAMPLES = int(os.environ.get("SQFX_FUZZ_EXAMPLES", _PROFILES[_PROFILE]))
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, derandomize=_PROFILE == "ci",
                     suppress_health_check=list(HealthCheck), database=None)
REFUSED = (sqfx.archive.UnsafeArchiveError, PackedFormatError, RuntimeError, ValueError, TypeError)
# sqfx.load refusals for what torch.export.load itself would do unsafely: not replayed there.
TORCH_HOLES = ("unpickle", "compiled code", "needs", "claim", "symbolic", "second program")
_FIXED_SLACK = 64 << 20
# Replay every n-th case through torch.export.load (its deserialization dominates a case's
# cost; sqfx.load refuses most cases from the metadata alone). CI: every case.
_PLAIN_EVERY = int(os.environ.get("SQFX_FUZZ_PLAIN_EVERY", "1"))
# ASan keeps freed memory in quarantine (and shadows it): RSS says nothing there.
_MEASURE_RSS = "libasan" not in os.environ.get("LD_PRELOAD", "")
_OPS = {torch.ops.sqfx.qlinear_dynamic.default: "dynamic", torch.ops.sqfx.qlinear_weight_only.default: "weight_only"}


TALLY = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    """Counts of cases, edits and outcomes, printed at the end (run with -s to see them)."""
    yield
    print("\narchive fuzz tally:", dict(sorted(TALLY.items())))


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bases")
    return {mode: (Archive(path), x) for mode in ("dynamic_int8", "weight_only")
            for path, x, _ in [exported_mlp(tmp, mode, name=f"{mode}.pt2")]}


_INT_EDGES = [0, 1, 2, 3, 7, 64, 2**31 - 1, 2**31, 2**32, 2**33, 2**62, 2**63 - 1, 2**63, -1, -2**31]


def _sym(draw):
    return {"as_int": draw(st.sampled_from(_INT_EDGES) | st.integers(0, 300))}


def meta_edit(draw, a):
    config = a.config()
    fqn = draw(st.sampled_from(sorted(config)))
    entry = config[fqn]
    meta = entry.setdefault("tensor_meta", {}) or {}
    field = draw(st.sampled_from(["dtype", "sizes", "strides", "storage_offset", "device", "requires_grad",
                                  "use_pickle", "is_param", "path_name", "layout", "drop_meta"]))
    if field == "dtype":
        meta["dtype"] = draw(st.integers(-1, 40))
    elif field in ("sizes", "strides"):
        how = draw(st.sampled_from(["entry", "length", "type"]))
        values = list(meta.get(field, []))
        if how == "entry" and values:
            values[draw(st.integers(0, len(values) - 1))] = _sym(draw)
        elif how == "length":
            values = values[:-1] if values and draw(st.booleans()) else values + [_sym(draw)]
        else:
            values = [{"as_expr": {"expr_str": "s0"}}] + values[1:]
        meta[field] = values
    elif field == "storage_offset":
        meta["storage_offset"] = _sym(draw)
    elif field == "device":
        meta["device"] = {"type": draw(st.sampled_from(["meta", "cuda", "cpu", "xla"])),
                          "index": draw(st.sampled_from([None, 0, 1]))}
    elif field == "requires_grad":
        meta["requires_grad"] = draw(st.sampled_from([True, False, None, 1, "yes"]))
    elif field == "use_pickle":
        entry["use_pickle"] = draw(st.sampled_from([True, None, 1]))
    elif field == "is_param":
        entry["is_param"] = draw(st.sampled_from([True, None, "x"]))
    elif field == "path_name":
        entry["path_name"] = draw(st.sampled_from(["weight_0", "weight_1", "weight_99", "../x", "", "tensor_0"]))
    elif field == "layout":
        meta["layout"] = draw(st.integers(-1, 12))
    else:
        entry["tensor_meta"] = None
    if field not in ("drop_meta",) and entry.get("tensor_meta") is not None:
        entry["tensor_meta"] = meta
    a.set_config(config)
    return f"meta:{field}"


def record_edit(draw, a):
    names = sorted(n for n in a.records if n.startswith("data/weights/weight_"))
    name = draw(st.sampled_from(names))
    data = bytearray(a.records[name])
    how = draw(st.sampled_from(["truncate", "empty", "extend", "byte", "byte", "byte", "word"]))
    if how == "truncate" and data:
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "empty":
        data = bytearray()
    elif how == "extend":
        data += bytes(draw(st.integers(1, 9)))
    elif how == "byte" and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "word" and len(data) >= 4:
        i = draw(st.integers(0, len(data) // 4 - 1)) * 4
        data[i:i + 4] = draw(st.sampled_from([0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x7F800000, 0x7FC00000,
                                              1000, 4])).to_bytes(4, "little")
    a.records[name] = bytes(data)
    return f"record:{how}"


def archive_edit(draw, a):
    how = draw(st.sampled_from(["add", "remove", "cut_json", "version", "sample_inputs"]))
    if how == "add":
        a.records[draw(st.sampled_from(["data/aotinductor/model/x.so", "data/weights/model.pt", "models/other.json",
                                        "data/constants/custom_obj_0", "unknown", "extra/note.txt"]))] = b"\x80\x04N."
    elif how == "remove":
        del a.records[draw(st.sampled_from(sorted(a.records)))]
    elif how == "cut_json":
        name = draw(st.sampled_from([WEIGHTS_CONFIG, "models/model.json", "data/constants/model_constants_config.json"]))
        a.records[name] = a.records[name][:draw(st.integers(0, len(a.records[name])))]
    elif how == "version":
        a.records["archive_version"] = draw(st.sampled_from([b"1", b"", b"0 "]))
    else:
        a.records["data/sample_inputs/model.pt"] = draw(st.sampled_from([b"", b"\x80\x04N.", b"junk"]))
    return f"archive:{how}"


EDITS = [meta_edit, meta_edit, record_edit, record_edit, archive_edit]


def _copy(archive):
    clone = Archive.__new__(Archive)
    clone.root, clone.records = archive.root, dict(archive.records)
    return clone


def _layers(program):
    """(op kind, tensors dict, in_features, relu) of every sqfx call on stored tensors."""
    lifted = {}
    for spec in program.graph_signature.input_specs:
        t = program.state_dict.get(spec.target, program.constants.get(spec.target)) if spec.target else None
        if isinstance(t, torch.Tensor):
            lifted[spec.arg.name] = t
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target in _OPS:
            names = [a.name for a in node.target._schema.arguments]
            args = dict(zip(names, node.args), **node.kwargs)
            tensors = {n: (lifted.get(v.name) if isinstance(v, torch.fx.Node) else v) for n, v in args.items()
                       if n in ("values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias")}
            yield _OPS[node.target], tensors, args["in_features"], args["relu"]


def _check_layers(program, strict):
    """strict (sqfx.load): every layer valid and equal to the reference on every kernel path.
    Else (torch.export.load): each layer refused by the op or equal to its block model."""
    for kind, t, k, relu in _layers(program):
        tensors = [t.get(n) for n in ("values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias")]
        if any(v is None for v in tensors[:4]):
            assert not strict
            continue
        x = torch.randn(3, k) if isinstance(k, int) and 0 < k < 10_000 else None
        if x is None:
            assert not strict
            continue
        for path in (WO_KERNELS if kind == "weight_only" else ISAS):
            ctx = _weight_only_kernel(path) if kind == "weight_only" else _kernel_path(path)
            with ctx:
                try:
                    if kind == "weight_only":
                        out = torch.ops.sqfx.qlinear_weight_only(x, *tensors[:4], tensors[5], k, relu)
                    else:
                        out = torch.ops.sqfx.qlinear_dynamic(x, *tensors, k, relu)
                except REFUSED as e:
                    assert not strict, f"sqfx.load accepted a layer the op refuses: {e}"
                    assert "sqfx" in str(e) or "expected" in str(e).lower(), str(e)
                    event("plain load: op refused a layer")
                    TALLY["plain load: op refused a layer"] += 1
                    break
            if kind == "weight_only":
                expected, bound = block_model_weight_only(x, *tensors[:4], tensors[5], k, relu)
                assert_close_weight_only(out, expected, bound)
            else:
                assert_same(out, block_model(x, *tensors, k, relu))
                if strict:
                    assert_same(out, reference.qlinear_dynamic(x, *tensors, k, relu))
        if strict:
            validate_packed(*tensors, in_features=k, out_features=tensors[3].numel(),
                            weight_only=kind == "weight_only")


def _maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.slow
@_SETTINGS
@given(data=st.data())
def test_fuzz_archives(bases, tmp_path_factory, data):
    mode = data.draw(st.sampled_from(["dynamic_int8", "weight_only"]))
    base, x = bases[mode]
    archive = _copy(base)
    TALLY["cases"] += 1
    for _ in range(data.draw(st.sampled_from([1, 2, 3, 4]))):
        try:
            edit = data.draw(st.sampled_from(EDITS))(data.draw, archive)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue  # the edit does not apply after an earlier one (e.g. a config cut short)
        event(edit)
        TALLY["mutations"] += 1
        TALLY[edit.split(":")[0]] += 1
    path = tmp_path_factory.mktemp("case") / "case.pt2"
    archive.write(path)
    size = path.stat().st_size
    before = _maxrss()
    refusal = None
    try:
        program = sqfx.load(path)
    except REFUSED as e:
        refusal = str(e)
        event(f"sqfx.load refused: {type(e).__name__}")
        TALLY[f"sqfx.load refused: {type(e).__name__}"] += 1
    grown = _maxrss() - before
    assert not _MEASURE_RSS or grown <= 4 * size + _FIXED_SLACK, f"sqfx.load grew the process by {grown} bytes"
    TALLY["max sqfx.load RSS growth (bytes)"] = max(TALLY["max sqfx.load RSS growth (bytes)"], grown)
    if refusal is None:
        event("sqfx.load accepted")
        TALLY["sqfx.load accepted"] += 1
        _check_layers(program, strict=True)
        program.module()(x)
        return  # torch.export.load reads the same tensors: nothing new to check
    if any(h in refusal for h in TORCH_HOLES) or TALLY["cases"] % _PLAIN_EVERY:
        return
    TALLY["replayed through torch.export.load"] += 1
    try:
        plain = torch.export.load(path)
    except Exception:  # noqa: BLE001 (torch's own errors for a malformed file are its business)
        event("torch.export.load raised")
        TALLY["torch.export.load raised"] += 1
        return
    TALLY["torch.export.load loaded (layers checked against the block model)"] += 1
    _check_layers(plain, strict=False)
