"""Artifacts: `torch.export` programs (.pt2) and AOTInductor packages of sqfx models.

A converted model calls `torch.ops.sqfx.qlinear_dynamic`, an op that lives in sqfx's compiled
library. Whoever loads an artifact must therefore `import sqfx` first: that loads the library
and registers the op (and its fake kernel) with the dispatcher. Without it torch fails with
"We failed to resolve torch.ops.sqfx.qlinear_dynamic.default to an operator" (torch.export.load)
or "Could not find schema for sqfx::qlinear_dynamic" (aoti_load_package). The helpers here
import the op by construction, and `save` writes a note saying so into the archive.
"""
from __future__ import annotations

import json
import os
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
    """`torch.export.load` with the sqfx op registered (this module's import registers it).

    A load that still fails on an sqfx op (e.g. a .pt2 made by a newer sqfx whose op schema this
    one lacks) is re-raised naming the cause.
    """
    try:
        ep = torch.export.load(path, extra_files=extra_files)
    except RuntimeError as e:
        raise RuntimeError(f"sqfx.load({os.fspath(path)!r}) failed: {e}\nIf the log above names "
                           f"torch.ops.sqfx.*, the archive needs an op this sqfx does not provide; "
                           f"re-export it with this sqfx version ({_note()}).") from e
    # The archive is untrusted: the op checks its packed tensors only in O(row blocks) per call.
    validate_program(ep)
    return ep


def validate_program(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Full `validate_packed` of every packed layer (constant tensors) the program's
    `sqfx::qlinear_dynamic` calls read; raises PackedFormatError naming the node and tensor."""
    from .format import PackedFormatError, validate_packed

    lifted = {name: t for name, (_, t) in _lifted_tensors(ep).items()}
    op = torch.ops.sqfx.qlinear_dynamic.default
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target is not op:
            continue
        args = list(node.args) + [None] * (9 - len(node.args))
        tensors = [lifted.get(a.name) if isinstance(a, torch.fx.Node) else a for a in args[1:7]]
        if any(t is None for t in tensors[:5]) or (isinstance(args[6], torch.fx.Node) and tensors[5] is None):
            continue  # computed in the graph, not a stored layer
        try:
            validate_packed(*tensors, in_features=args[7], out_features=int(tensors[3].numel()))
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
            matched=str(node.target), activation=mode, kernel=p.kernel if mode == "dynamic_int8" else "weight_only"))
    return report
