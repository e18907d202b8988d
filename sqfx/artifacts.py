"""Artifacts: `torch.export` programs (.pt2) and AOTInductor packages of sqfx models.

A converted model calls `torch.ops.sqfx.qlinear_dynamic`, an op that lives in sqfx's compiled
library. Whoever loads an artifact must therefore `import sqfx` first: that loads the library
and registers the op (and its fake kernel) with the dispatcher. Without it torch fails with
"We failed to resolve torch.ops.sqfx.qlinear_dynamic.default to an operator" (torch.export.load)
or "Could not find schema for sqfx::qlinear_dynamic" (aoti_load_package). The helpers here
import the op by construction, and `save` writes a note saying so into the archive.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from typing import Any, Optional

import torch

from . import ops  # noqa: F401  (registers sqfx::qlinear_dynamic: every artifact calls it)
from .format import FORMAT_VERSION

IMPORT_HINT = ("This artifact calls torch.ops.sqfx.qlinear_dynamic: run `import sqfx` before loading it "
               "(or load it with sqfx.load / sqfx.load_package), so the op is registered.")
_NOTE_NAME = "sqfx.json"


def export(model: torch.nn.Module, example_inputs=None, config=None, dynamic_shapes=None, *,
           strict: bool = False, example_kwarg_inputs: Optional[dict] = None) -> torch.export.ExportedProgram:
    """Converts `model` with the sqfx conversion core and exports the result with `torch.export.export`.

    example_inputs: a tensor, a tuple of positional inputs, or a dict of keyword inputs (a
        tokenizer's BatchEncoding); example_kwarg_inputs: more keyword inputs.
    config: a SparseQuantConfig, a dict of its fields, or None (defaults).
    dynamic_shapes: as for `torch.export.export`, e.g. `({0: Dim("batch"), 1: Dim("seq")},)`.

    The model is prepared as every door prepares it (sqfx.prepare: private copy, masks,
    parametrizations stripped, calibration for activation="auto" on the example inputs), captured
    with torch.export itself (non-strict unless `strict=True`) *with* the dynamic shapes, the
    captured graph (pre-decomposition ATen: aten.linear -> aten.relu) is lowered as
    `prepare_and_convert` lowers its graphs (same fqns, masks, observers, skip rules), and the
    rewritten module is exported again, so the program keeps the dynamic dims. The input model is
    not mutated. The conversion report is `ep.sqfx_report` (not saved with the program).
    Save with `sqfx.save` (or torch.export.save); load after `import sqfx`.
    """
    from .config import as_config
    from .lowering import convert_graph
    from .prepare import example_call, prepare

    config = as_config(config)
    example = example_call(example_inputs, example_kwarg_inputs, "sqfx.export")
    if example is None:
        raise TypeError("sqfx.export: example_inputs (or example_kwarg_inputs) are required")
    prepared = prepare(model, config, example, where="sqfx.export")
    args, kwargs = example.args, example.kwargs or None
    with torch.no_grad():
        captured = torch.export.export(prepared.model, args, kwargs=kwargs,
                                       dynamic_shapes=dynamic_shapes, strict=strict).module()
        report = convert_graph(captured, config, root=prepared.model, module_masks=prepared.module_masks,
                               capture="torch.export", act_modes=prepared.act_modes)
        ep = torch.export.export(captured, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=strict)
    ep.sqfx_report = report
    return ep


def _note() -> str:
    from . import __version__

    return json.dumps({"sqfx_version": __version__, "packed_format_version": FORMAT_VERSION,
                       "torch_version": torch.__version__, "load": IMPORT_HINT})


def save(ep: torch.export.ExportedProgram, path, extra_files: Optional[dict] = None) -> None:
    """`torch.export.save(ep, path)` plus an `sqfx.json` note in the archive (versions, how to load)."""
    files = dict(extra_files or {})
    files.setdefault(_NOTE_NAME, _note())
    torch.export.save(ep, path, extra_files=files)


def load(path, extra_files: Optional[dict] = None) -> torch.export.ExportedProgram:
    """Loads a .pt2 saved by `sqfx.save` / `torch.export.save`, safe for untrusted files.

    Before torch reads anything, `sqfx.archive.inspect_archive` checks the archive's metadata
    and refuses (UnsafeArchiveError, naming the record) whatever would make torch unpickle,
    run or allocate beyond the file: pickled records, sizes that a record's bytes cannot back,
    non-CPU devices, unknown records, unsafe symbolic expressions. The program is then read
    with torch's pt2 reader (not `torch.export.load`, which retries a failed file as the legacy
    pickle format), its graph may call operators only, and every packed layer gets the full
    `validate_packed` (`validate_program`). `extra_files` is filled as torch.export.load does.
    """
    from torch.export.pt2_archive._package import load_pt2

    from .archive import check_call_targets, inspect_archive

    inspect_archive(path)
    where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    imported: set[str] = set()
    while True:
        try:
            if hasattr(where, "seek"):
                where.seek(0)
            contents = load_pt2(where)
            ep = contents.exported_programs["model"]
            break
        except Exception as e:  # noqa: BLE001 (torch raises many types; the caller gets one)
            module = _output_type_module(e)
            if module is not None and module not in imported:
                imported.add(module)
                importlib.import_module(module)  # registers the output type with pytree; retry
                continue
            raise RuntimeError(f"sqfx.load({where!r}) failed: {type(e).__name__}: {e}{_load_hint(e)}") from e
    if extra_files is not None:
        extra_files.update(contents.extra_files)
    check_call_targets(ep)
    # The archive is untrusted: the op checks its packed tensors only in O(row blocks) per call.
    validate_program(ep)
    return ep


# Output types an archive may name whose module registers them with torch's pytree on import:
# Hugging Face's ModelOutput dataclasses (BertModel returns BaseModelOutputWithPoolingAndCrossAttentions).
# Only these modules are imported on an archive's word: importing runs code, so never an
# arbitrary name from an untrusted file.
_OUTPUT_TYPE_MODULES = re.compile(r"transformers\.(modeling_outputs|models\.\w+\.modeling_\w+)")
_UNREGISTERED = re.compile(r"Deserializing ([\w.]+) in pytree is not registered")


def _output_type_module(e: BaseException) -> Optional[str]:
    """The module to import when `e` is pytree's "not registered" for a known output type."""
    found = _UNREGISTERED.search(str(e))
    if not found:
        return None
    module = found.group(1).rpartition(".")[0]
    if not _OUTPUT_TYPE_MODULES.fullmatch(module) or importlib.util.find_spec(module.partition(".")[0]) is None:
        return None
    return module


def _load_hint(e: BaseException) -> str:
    found = _UNREGISTERED.search(str(e))
    if found:
        return (f"\nThe program returns {found.group(1)}, a type torch's pytree does not know in this "
                "process: import the module that defines (and registers) it before sqfx.load.")
    if "sqfx" in str(e):
        return (f"\nThe archive calls a torch.ops.sqfx.* op this sqfx does not provide; re-export it "
                f"with this sqfx version ({_note()}).")
    return ""


_PACKED_ARGS = ("values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias")


def validate_program(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Full `validate_packed` of every packed layer (stored tensors) that the program's
    `sqfx::qlinear_dynamic` and `sqfx::qlinear_weight_only` calls read; raises
    PackedFormatError naming the call and the tensor. A packed argument computed in the graph
    instead of stored is refused too: nothing could vouch for it before it reaches the op."""
    from .format import PackedFormatError, PackedLinear, validate_packed, validate_tiled

    lifted = {name: t for name, (_, t) in _lifted_tensors(ep).items()}
    ops = (torch.ops.sqfx.qlinear_dynamic.default, torch.ops.sqfx.qlinear_weight_only.default)
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target not in ops:
            continue
        names = [a.name for a in node.target._schema.arguments]
        args = dict(zip(names, node.args), **node.kwargs)
        tensors = {}
        for name in _PACKED_ARGS:
            if name not in names:  # the weight-only op has no w_sum
                tensors[name] = None
                continue
            arg = args.get(name)
            if isinstance(arg, torch.fx.Node):
                if arg.name not in lifted:
                    raise PackedFormatError(f"sqfx packed format: {name} of the program's call {node.name} is "
                                            "computed in the graph, not a stored tensor: it cannot be validated")
                arg = lifted[arg.name]
            elif arg is not None or name != "bias":
                raise PackedFormatError(f"sqfx packed format: {name} of the program's call {node.name} "
                                        f"is not a tensor: {arg!r}")
            tensors[name] = arg
        out_features = tensors["w_scale"].numel() if isinstance(tensors["w_scale"], torch.Tensor) else -1
        try:
            validate_packed(**tensors, in_features=args.get("in_features"), out_features=int(out_features),
                            weight_only="w_sum" not in names)
            tiled = [args.get(f) for f in PackedLinear.TILED_FIELDS] if "tile_ptr" in names else []
            if any(t is not None for t in tiled):  # the small-M layout must be the one the BSR derives
                if not all(isinstance(t, torch.fx.Node) and t.name in lifted for t in tiled):
                    raise PackedFormatError(f"sqfx packed format: the tiled layout of the program's call {node.name} "
                                            "is not five stored tensors: it cannot be validated")
                validate_tiled([tensors[f] for f in ("values", "row_ptr", "col_idx", "w_scale")],
                               args.get("in_features"), [lifted[t.name] for t in tiled])
        except PackedFormatError as e:
            raise PackedFormatError(f"{e} (in the program's call {node.name})") from None
    return ep


def aoti_compile(ep: torch.export.ExportedProgram, package_path, inductor_configs: Optional[dict] = None) -> str:
    """Compiles an exported sqfx program with AOTInductor into a `.pt2` package; returns its path.

    The op stays a call through the dispatcher (AOTInductor's proxy executor), so the package
    runs wherever `import sqfx` provides the same op library.
    """
    return torch._inductor.aoti_compile_and_package(ep, package_path=os.fspath(package_path),
                                                    inductor_configs=inductor_configs)


def load_package(path, **kwargs: Any):
    """`torch._inductor.aoti_load_package` with the sqfx op registered; returns the callable."""
    return torch._inductor.aoti_load_package(os.fspath(path), **kwargs)


def _lifted_tensors(ep: torch.export.ExportedProgram) -> dict:
    """{placeholder name: tensor} for the program's lifted parameters, buffers and constants."""
    lifted = {}
    for spec in ep.graph_signature.input_specs:
        target = getattr(spec, "target", None)
        if target is None:
            continue
        t = ep.state_dict.get(target, ep.constants.get(target))
        if isinstance(t, torch.Tensor):
            lifted[spec.arg.name] = (target, t)
    return lifted


def report_from_program(ep: torch.export.ExportedProgram):
    """The ConversionReport of an exported sqfx program, read from its op calls and packed
    constants (capture "program"; no SQNR or mask source: the fp32 weights are not in it)."""
    import math

    from .format import PackedLinear
    from .lowering.report import ConversionReport, LayerReport
    from .format import dense_int8

    lifted = _lifted_tensors(ep)
    dynamic, weight_only = torch.ops.sqfx.qlinear_dynamic.default, torch.ops.sqfx.qlinear_weight_only.default
    report = ConversionReport(capture="program")

    def get(a):
        return lifted[a.name][1] if isinstance(a, torch.fx.Node) else None

    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target not in (dynamic, weight_only):
            continue
        if node.target is weight_only:  # (x, values, row_ptr, col_idx, w_scale, bias, in_features, relu)
            values, row_ptr, col_idx, w_scale, bias = (get(a) for a in node.args[1:6])
            in_features, relu, mode = int(node.args[6]), bool(node.args[7]), "weight_only"
            w_sum = dense_int8(values, row_ptr, col_idx, w_scale.shape[0], in_features).sum(1, dtype=torch.int32)
        else:  # (x, values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, relu)
            values, row_ptr, col_idx, w_scale, w_sum, bias = (get(a) for a in node.args[1:7])
            in_features, relu, mode = int(node.args[7]), bool(node.args[8]), "dynamic_int8"
        per_channel = not bool((w_scale == w_scale[0]).all()) if w_scale.numel() > 1 else False
        p = PackedLinear(values, row_ptr, col_idx, w_scale, w_sum, bias, in_features, int(w_scale.shape[0]),
                         per_channel)
        stack = node.meta.get("nn_module_stack") or {}
        holder = lifted[node.args[1].name][0].rpartition(".")[0]
        fqn = list(stack.values())[-1][0] if stack else holder
        report.layers.append(LayerReport(
            fqn=fqn, in_features=in_features, out_features=p.out_features, block=p.block, sparsity=p.sparsity,
            scheme=f"int8 {p.scheme}", relu_fused=relu, sqnr_db=math.nan, mask_source="stored in the program",
            matched=str(node.target), activation=mode, kernel=p.kernel_summary("qlinear_weight_only" if mode == "weight_only" else "qlinear_dynamic")))
    return report
