"""What `sqfx.load` checks in a `.pt2` before torch reads anything from it.

`torch.export.load` trusts its file. Among what a tampered archive gets from it (torch 2.13):
- weight/constant records marked `"use_pickle": true` go through `torch.load(weights_only=False)`:
  arbitrary code runs;
- `data/sample_inputs/model.pt` is retried with `weights_only=False` when the safe unpickler
  refuses it; constants named `custom_obj_*` / `opaque_obj_*` are unpickled; a legacy
  `data/weights/model.pt` is read, and a file that fails to load is retried as the legacy
  zip format, all pickle;
- `data/aotinductor/...` is loaded as compiled code (a shared library);
- a record of 0 bytes with large `sizes` makes torch allocate (and zero) the claimed size;
- symbolic shape strings in the graph go through `sympy.sympify`, which evaluates Python;
- a node's target may name any `torch.*` attribute (e.g. `torch.save`): it runs at call time;
- devices, dtypes, strides and offsets are taken as written (a `meta` packed tensor, a
  misaligned one, `requires_grad` on an int tensor, a view past its record).

`inspect_archive` reads only the zip directory and the small JSON records, and refuses all of
the above with an `UnsafeArchiveError` naming the record; `check_call_targets` then checks the
loaded graph. What it allows is exactly what `torch.export.save` writes for a plain program.
"""
from __future__ import annotations

import io
import json
import os
import re

import torch

ARCHIVE_VERSION = "0"  # torch.export.pt2_archive.constants.ARCHIVE_VERSION_VALUE (torch 2.13)
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
MODEL = "models/model.json"
# Every record torch.export.save writes for one program, and nothing else.
_ALLOWED = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt|extra/[^/]+)")
_WHY_NOT = (("data/aotinductor/", "compiled code that torch loads as a shared library"),
            ("data/weights/model.pt", "legacy weights that torch unpickles"),
            ("data/constants/model.pt", "legacy constants that torch unpickles"),
            ("data/constants/custom_obj_", "a TorchBind object that torch unpickles"),
            ("data/constants/opaque_obj_", "a Python object that torch unpickles"),
            ("models/", "a second program, which torch loads with its own weights"))
# Symbolic shape expressions (sympy srepr, e.g. "Mul(Integer(32), Symbol('s27', positive=True,
# integer=True))") are handed to sympy.sympify, which evaluates them as Python with builtins in
# reach. Allowed: sympy constructors and torch's shape functions by name, quoted symbol names,
# numbers, assumption keywords, arithmetic; no attribute access, subscripts or other names.
_EXPR_TOKEN = re.compile(r"\s*(?:([A-Za-z_][A-Za-z_0-9]*)|'([A-Za-z_][A-Za-z_0-9]{0,30}|[-+]?\d{1,30}(?:\.\d{1,30})?"
                         r"(?:e[-+]?\d{1,4})?)'|(\d{1,20}(?:\.\d{1,20})?)|(\*\*|//|==|!=|<=|>=|[-+*/%(),<>=&|~]))")
_EXPR_NAMES = frozenset((
    "FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv "
    "IntTrueDiv FloatTrueDiv TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat Identity "
    "IsNonOverlappingAndDenseIndicator Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan "
    "StrictGreaterThan LessThan GreaterThan Equality Unequality And Or Not BooleanTrue BooleanFalse "
    "true false True False oo zoo nan NaN Infinity NegativeInfinity Integer Rational Float Symbol "
    "Dummy Add Mul Pow PowByNatural FloatPow LShift RShift One Zero NegativeOne Half "
    "positive negative nonnegative nonpositive integer real finite infinite zero nonzero even odd "
    "rational commutative extended_real precision").split())
# A power or shift of two literals is computed exactly by sympy (2 ** 10**18 never ends).
_NEEDS_SYMBOL_FIRST = frozenset(("Pow", "PowByNatural", "FloatPow", "LShift", "RShift"))
_SYMBOL = re.compile(r"[a-z]+\d+")
_MAX_EXPR = 4000


class UnsafeArchiveError(ValueError):
    """sqfx.load refused a .pt2 before torch read it; the message names the record and why."""


def _refuse(record: str, why: str):
    raise UnsafeArchiveError(f"sqfx.load refused the archive: {record}: {why}")


def _file_size(f) -> int:
    if isinstance(f, (str, os.PathLike)):
        return os.path.getsize(f)
    position = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(position)
    return size


def _open(f):
    try:
        return torch._C.PyTorchFileReader(os.fspath(f) if isinstance(f, (str, os.PathLike)) else f)
    except RuntimeError as e:
        raise UnsafeArchiveError(f"sqfx.load refused the archive: not a readable .pt2 zip ({e})") from None


def _json(reader, name: str):
    try:
        return json.loads(reader.get_record(name).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        _refuse(name, f"is not valid JSON ({type(e).__name__})")


def _int_field(record, what, value, minimum=0):
    if not (isinstance(value, dict) and set(value) == {"as_int"} and type(value["as_int"]) is int
            and minimum <= value["as_int"] < 2**63):
        _refuse(record, f"{what} must be a concrete integer >= {minimum} below 2**63, got {value!r}")
    return value["as_int"]


def _tensor_meta(where: str, meta) -> tuple:
    """(dtype, sizes, strides, offset) of a payload's tensor_meta, each checked."""
    from torch._export.serde import schema
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE, _SERIALIZE_TO_TORCH_LAYOUT

    if not isinstance(meta, dict):
        _refuse(where, "has no tensor_meta")
    try:
        dtype = _SERIALIZE_TO_TORCH_DTYPE[schema.ScalarType(meta.get("dtype"))]
        layout = _SERIALIZE_TO_TORCH_LAYOUT[schema.Layout(meta.get("layout"))]
    except (ValueError, KeyError, TypeError):
        _refuse(where, f"has an unknown dtype or layout ({meta.get('dtype')!r}, {meta.get('layout')!r})")
    if layout != torch.strided:
        _refuse(where, f"has layout {layout}; only strided tensors are read")
    device = meta.get("device")
    if not (isinstance(device, dict) and device.get("type") == "cpu" and device.get("index") in (None, 0)):
        _refuse(where, f"has device {device!r}; sqfx runs on the CPU only")
    sizes, strides = meta.get("sizes"), meta.get("strides")
    if not (isinstance(sizes, list) and isinstance(strides, list) and len(sizes) == len(strides) <= 64):
        _refuse(where, f"needs as many strides as sizes (at most 64), got {sizes!r} and {strides!r}")
    sizes = [_int_field(where, "sizes", s) for s in sizes]
    strides = [_int_field(where, "strides", s) for s in strides]
    offset = _int_field(where, "storage_offset", meta.get("storage_offset"))
    requires_grad = meta.get("requires_grad")
    if type(requires_grad) is not bool or (requires_grad and not (dtype.is_floating_point or dtype.is_complex)):
        _refuse(where, f"has requires_grad {requires_grad!r} for dtype {dtype}; only floating point "
                       "tensors can require gradients")
    return dtype, sizes, strides, offset


def _check_payloads(reader, config_name: str, folder: str, prefix: str, sizes_of: dict) -> None:
    config = _json(reader, config_name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict) or set(config) != {"config"}:
        _refuse(config_name, "must be {\"config\": {name: payload}}")
    dtype_of_record = {}
    for fqn, payload in entries.items():
        where = f"{config_name} entry {fqn!r}"
        if not isinstance(payload, dict):
            _refuse(where, "is not an object")
        if payload.get("use_pickle") is not False:
            _refuse(where, f"has use_pickle {payload.get('use_pickle')!r}: torch would unpickle the record "
                           "with weights_only=False (arbitrary code)")
        if type(payload.get("is_param")) is not bool:
            _refuse(where, f"has is_param {payload.get('is_param')!r}, not a bool")
        path = payload.get("path_name")
        if not (isinstance(path, str) and re.fullmatch(re.escape(prefix) + r"\d+", path)):
            _refuse(where, f"names record {path!r}, not {prefix}<n>")
        record = folder + path
        if record not in sizes_of:
            _refuse(where, f"names record {record}, which the archive lacks")
        dtype, sizes, strides, offset = _tensor_meta(f"{where} (record {record})", payload.get("tensor_meta"))
        # torch reads one record as one flat tensor of the dtype of its first entry.
        if dtype_of_record.setdefault(record, dtype) != dtype:
            _refuse(record, f"is read as {dtype_of_record[record]} and {dtype} by two entries")
        nbytes, item = sizes_of[record], torch.empty((), dtype=dtype).element_size()
        if nbytes % item:
            _refuse(record, f"holds {nbytes} bytes, not a whole number of {dtype} elements")
        needed = 0 if 0 in sizes else (offset + sum((n - 1) * s for n, s in zip(sizes, strides)) + 1) * item
        if needed > nbytes:
            _refuse(record, f"holds {nbytes} bytes, but entry {fqn!r} (sizes {sizes}, strides {strides}, "
                            f"storage_offset {offset}, {dtype}) needs {needed}: truncated or oversized")


def _walk(value, found):
    """Yields every (key, value) pair of nested JSON, iteratively (no recursion limit)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, item in v.items():
                found(k, item)
                stack.append(item)
        elif isinstance(v, list):
            stack.extend(v)


def _check_expression(text) -> None:
    if not isinstance(text, str) or len(text) > _MAX_EXPR:
        _refuse(MODEL, f"holds a symbolic expression that is not a short string: {str(text)[:80]!r}")
    tokens, position, depth = [], 0, 0
    while position < len(text.rstrip()):
        match = _EXPR_TOKEN.match(text, position)
        if not match:
            _refuse(MODEL, f"holds a symbolic expression torch would evaluate with Python: {text[:80]!r}")
        name, quoted, number, operator = match.groups()
        if name is not None and name not in _EXPR_NAMES and not _SYMBOL.fullmatch(name):
            _refuse(MODEL, f"holds a symbolic expression naming {name!r}: {text[:80]!r}")
        if operator == "**" and tokens and tokens[-1][2] is not None:
            _refuse(MODEL, f"holds a power of a literal: {text[:80]!r}")
        depth += (operator == "(") - (operator == ")")
        if depth > 64:
            _refuse(MODEL, f"holds a symbolic expression nested too deep: {text[:80]!r}")
        tokens.append(match.groups())
        position = match.end()
    for i, (name, *_) in enumerate(tokens):
        if name in _NEEDS_SYMBOL_FIRST and tokens[i + 2: i + 3] != [("Symbol", None, None, None)]:
            _refuse(MODEL, f"holds {name} of a literal, which sympy would compute exactly: {text[:80]!r}")


def inspect_archive(f) -> None:
    """Refuses (UnsafeArchiveError) a .pt2 that torch.export.load would not read safely; reads
    the zip directory and the JSON records only, so it costs O(metadata)."""
    reader = _open(f)
    names = reader.get_all_records()
    sizes_of = {name: reader.get_record_size(name) for name in names}
    # Stored records never add up to more than the file: compressed (zip bomb) or overlapping
    # records would let torch allocate more than the file holds.
    total, file_size = sum(sizes_of.values()), _file_size(f)
    if total > file_size:
        _refuse("the zip directory", f"its records claim {total} bytes in a file of {file_size}")
    for name in names:
        if not _ALLOWED.fullmatch(name):
            why = next((w for p, w in _WHY_NOT if name.startswith(p)), "not a record torch.export.save writes")
            _refuse(name, why)
    for required in ("archive_format", "archive_version", MODEL, WEIGHTS_CONFIG, CONSTANTS_CONFIG):
        if required not in sizes_of:
            _refuse(required, "is missing")
    if reader.get_record("archive_format") != b"pt2":
        _refuse("archive_format", "is not 'pt2'")
    if reader.get_record("archive_version") != ARCHIVE_VERSION.encode():
        _refuse("archive_version", f"is not {ARCHIVE_VERSION!r}, the version this torch reads")
    _check_payloads(reader, WEIGHTS_CONFIG, "data/weights/", "weight_", sizes_of)
    _check_payloads(reader, CONSTANTS_CONFIG, "data/constants/", "tensor_", sizes_of)
    if SAMPLE_INPUTS in sizes_of and sizes_of[SAMPLE_INPUTS]:
        # torch retries this record with weights_only=False when the safe unpickler refuses it.
        try:
            torch.load(io.BytesIO(reader.get_record(SAMPLE_INPUTS)), weights_only=True)
        except Exception as e:  # noqa: BLE001 (any failure means torch would fall back)
            _refuse(SAMPLE_INPUTS, f"needs the unsafe unpickler (weights_only=True fails: {str(e)[:200]})")
    expressions = []
    _walk(_json(reader, MODEL), lambda key, value: expressions.append(value) if key == "expr_str" else None)
    for text in expressions:
        _check_expression(text)


def check_call_targets(ep: torch.export.ExportedProgram) -> None:
    """Every node of the loaded graph (and its submodules) calls an operator, never an arbitrary
    Python function that a tampered graph named (e.g. torch.save)."""
    import math
    import operator

    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op not in ("call_function", "call_method", "call_module"):
                continue
            target = node.target
            ok = node.op == "call_function" and (
                isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator))
                or (callable(target) and getattr(target, "__module__", None) in ("_operator", "math")
                    and (getattr(operator, getattr(target, "__name__", ""), None) is target
                         or getattr(math, getattr(target, "__name__", ""), None) is target)))
            if not ok:
                _refuse(MODEL, f"node {node.name} calls {target!r}, not an operator")
