"""Artifacts: `torch.export` programs (.pt2) and AOTInductor packages of sqfx models.

A converted model calls `torch.ops.sqfx.qlinear_dynamic`, an op that lives in sqfx's compiled
library. Whoever loads an artifact must therefore `import sqfx` first: that loads the library
and registers the op (and its fake kernel) with the dispatcher. Without it torch fails with
"We failed to resolve torch.ops.sqfx.qlinear_dynamic.default to an operator" (torch.export.load)
or "Could not find schema for sqfx::qlinear_dynamic" (aoti_load_package). The helpers here
import the op by construction, and `save` writes a note saying so into the archive.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Optional

import torch

from . import ops  # noqa: F401  (registers sqfx::qlinear_dynamic: every artifact calls it)
from .format import FORMAT_VERSION

IMPORT_HINT = ("This artifact calls torch.ops.sqfx.qlinear_dynamic: run `import sqfx` before loading it "
               "(or load it with sqfx.load / sqfx.load_package), so the op is registered.")
_NOTE_NAME = "sqfx.json"


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"sqfx.export: example_inputs must be a tensor or a tuple of inputs, "
                        f"got {type(example_inputs).__name__}")
    return example_inputs


def export(model: torch.nn.Module, example_inputs, config=None, dynamic_shapes=None, *,
           strict: bool = False, example_kwarg_inputs: Optional[dict] = None) -> torch.export.ExportedProgram:
    """Converts `model` with the sqfx FX pass and exports the result with `torch.export.export`.

    example_inputs: a tensor or a tuple of positional inputs.
    config: a SparseQuantConfig, a dict of its fields, or None (defaults).
    dynamic_shapes: as for `torch.export.export`, e.g. `({0: Dim("batch"), 1: Dim("seq")},)`.

    The model is captured with torch.export itself (non-strict unless `strict=True`) *with* the
    dynamic shapes, the captured graph (pre-decomposition ATen: aten.linear -> aten.relu) is
    rewritten exactly as `prepare_and_convert` rewrites its graphs (same fqns, masks, observers),
    and the rewritten module is exported again, so the program keeps the dynamic dims. The input
    model is not mutated. The conversion report is `ep.sqfx_report` (not saved with the program).
    Save with `sqfx.save` (or torch.export.save); load after `import sqfx`.
    """
    from .config import as_config
    from .lowering import convert_graph
    from .lowering.mask import collect_module_masks, strip_reparametrizations

    config = as_config(config)
    args = _as_tuple(example_inputs)
    work = copy.deepcopy(model).eval()
    module_masks = collect_module_masks(work)
    strip_reparametrizations(work)
    with torch.no_grad():
        captured = torch.export.export(work, args, kwargs=example_kwarg_inputs,
                                       dynamic_shapes=dynamic_shapes, strict=strict).module()
        report = convert_graph(captured, config, root=work, module_masks=module_masks, capture="torch.export")
        ep = torch.export.export(captured, args, kwargs=example_kwarg_inputs,
                                 dynamic_shapes=dynamic_shapes, strict=strict)
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
    from .format import PackedFormatError, validate_packed, validate_tiled

    lifted = {}
    for spec in ep.graph_signature.input_specs:
        target = getattr(spec, "target", None)
        if target is None:
            continue
        t = ep.state_dict.get(target, ep.constants.get(target))
        if isinstance(t, torch.Tensor):
            lifted[spec.arg.name] = t
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
            from .format import PackedLinear

            raw = list(node.args[9:14]) + [node.kwargs.get(f) for f in PackedLinear.TILED_FIELDS[len(node.args[9:14]):]]
            tiled = [lifted.get(a.name) if isinstance(a, torch.fx.Node) else a for a in raw]
            if any(t is not None for t in tiled):
                validate_tiled(tensors[:4], args[7], tiled)
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
