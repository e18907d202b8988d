"""The graph rewrite (the graph emitter of step 2): each match goes through LayerLowering and
becomes one `torch.ops.sqfx.qlinear_dynamic` / `qlinear_weight_only` call whose packed tensors
are `get_attr` buffers of a SparseQuantLinear submodule; the fp32 weight leaves the module."""
from __future__ import annotations

import copy
import re
from typing import Optional

import torch
from torch import fx, nn

from .. import ops  # noqa: F401  (the op must be registered before a graph can call it)
from ..config import SparseQuantConfig, as_config
from ..nn import _BUFFER, SparseQuantLinear
from ..format import PackedLinear
from ..patterns import LinearMatch, find_linear_matches
from ..patterns.linear_relu import PlaceholderResolver, linear_like
from .layer import MHA_REASON, LayerLowering, LayerUse, inside_multihead_attention
from .mask import collect_module_masks
from .report import ConversionReport, SkippedLayer

QLINEAR = torch.ops.sqfx.qlinear_dynamic.default
QLINEAR_WEIGHT_ONLY = torch.ops.sqfx.qlinear_weight_only.default
_TILED_FIELDS = PackedLinear.TILED_FIELDS  # the op's optional small-M layout


def _describe(match: LinearMatch) -> str:
    node = match.linear_node
    if node.op == "call_module":
        if match.relu_in_module:
            return "LinearReLU module"
        return "Conv1D module" if match.weight_transposed else "nn.Linear module"
    target = node.target
    return str(target) if isinstance(target, torch._ops.OpOverload) else f"{target.__module__}.{target.__name__}"


def _holder_name(gm: nn.Module, fqn: str) -> str:
    base = "sqfx_" + re.sub(r"[^0-9A-Za-z_]", "_", fqn)
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _lookup_module(root: Optional[nn.Module], fqn: str):
    if root is None:
        return None
    try:
        mod = root.get_submodule(fqn)
    except AttributeError:
        return None
    return mod


def _emit(gm: fx.GraphModule, match: LinearMatch, holder: str, use: LayerUse) -> fx.Node:
    """Replaces the match by one op call reading the packed tensors of the SparseQuantLinear
    `holder` (a submodule of gm: its state_dict validates on load, and module casts such as
    .half() leave its int8 / fp32 tensors alone)."""
    graph = gm.graph
    out = match.output_node
    p = use.packed
    with graph.inserting_before(match.linear_node):
        def attr(name):
            return graph.get_attr(f"{holder}.{_BUFFER[name]}") if getattr(p, name) is not None else None

        x = match.input_node
        if use.activation == "weight_only":
            node = graph.call_function(QLINEAR_WEIGHT_ONLY, (
                x, attr("values"), attr("row_ptr"), attr("col_idx"), attr("w_scale"), attr("bias"),
                p.in_features, use.relu))
        else:
            # The small-M tiled layout the holder derived (non-persistent buffers), when it has one.
            has_tiled = gm.get_submodule(holder).tiled_tile_ptr is not None
            tiled = tuple(graph.get_attr(f"{holder}.tiled_{f}") for f in _TILED_FIELDS) if has_tiled else ()
            node = graph.call_function(QLINEAR, (
                x, attr("values"), attr("row_ptr"), attr("col_idx"), attr("w_scale"), attr("w_sum"),
                attr("bias"), p.in_features, use.relu, *tiled))
    # Shapes from the value the op replaces; the module stack (the layer's name in later
    # exports) from the linear, not from a fused ReLU module.
    node.meta.update({k: v for k, v in out.meta.items() if k in ("val", "example_value", "tensor_meta")})
    node.meta.update({k: v for k, v in match.linear_node.meta.items() if k in ("stack_trace", "nn_module_stack")})
    relu_node = match.relu_node if use.relu and not match.relu_in_module else None
    (relu_node or match.linear_node).replace_all_uses_with(node)
    if relu_node is not None:
        graph.erase_node(relu_node)
    graph.erase_node(match.linear_node)
    return node


def _drop_unused_fp32(gm: fx.GraphModule, attr_nodes: set) -> None:
    """Removes the fp32 weights the rewrite made dead (get_attr nodes, attributes, modules)."""
    graph = gm.graph
    for node in list(attr_nodes):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    live_attrs = {n.target for n in graph.nodes if n.op == "get_attr"}
    live_modules = {n.target for n in graph.nodes if n.op == "call_module"}
    for node in attr_nodes:
        target = node.target
        if node.op != "get_attr" or target in live_attrs:
            continue
        owner_name, _, attr = target.rpartition(".")
        if owner_name and any(owner_name == t or owner_name.startswith(t + ".") for t in live_modules):
            continue  # a module the graph still calls reads it (a tied nn.Embedding / lm_head)
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if hasattr(owner, attr):
            delattr(owner, attr)
    # Modules the graph no longer calls or reads (converted nn.Linear, fused nn.ReLU, the
    # husk of a module whose weight was a get_attr) are dead weight: drop them.
    gm.delete_all_unused_submodules()


def report_left_out(root: nn.Module, report: ConversionReport, capture: str) -> None:
    """Files every linear-like module of `root` the graph never called as a linear (and no rule
    skipped) as skipped, with the reason, so that no layer is left out silently."""
    seen = set(report.converted) | {s.fqn for s in report.skipped}
    for fqn, module in root.named_modules():
        prefix = f"{fqn}." if fqn else ""
        if isinstance(module, nn.MultiheadAttention):  # its input projection is a bare parameter
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(module, name, None) is not None and prefix + name not in seen:
                    report.skipped.append(SkippedLayer(prefix + name, MHA_REASON))
        if linear_like(module) is None or fqn in seen or any(n.startswith(prefix) for n in seen):
            continue
        reason = MHA_REASON if inside_multihead_attention(root, fqn) else (
            f"not called as a linear in the {capture} graph (its weight is read some other way)")
        report.skipped.append(SkippedLayer(fqn, reason))


def convert_graph(gm: fx.GraphModule, config: Optional[SparseQuantConfig] = None, *,
                  root: Optional[nn.Module] = None,
                  resolve_placeholder: Optional[PlaceholderResolver] = None,
                  module_masks: Optional[dict] = None,
                  capture: str = "graph",
                  act_modes: Optional[dict] = None) -> ConversionReport:
    """Rewrites every selected linear (+ReLU) of `gm` in place; returns the report.

    gm: a GraphModule from torch.fx.symbolic_trace, a Dynamo backend, or `ExportedProgram.module()`
        (pre-decomposition aten). Each packed layer becomes a SparseQuantLinear submodule of gm
        (`sqfx_<fqn>`) whose buffers the op call reads with get_attr.
    root: the model the graph came from, used to find modules by fqn (for filter_fn, include /
        exclude by type, masks carried by modules, and the report of layers left out). Defaults to gm.
    resolve_placeholder: node -> (fqn, tensor) | None for graphs whose parameters are inputs
        (Dynamo: sqfx.patterns.dynamo_param_resolver(gm, example_inputs, root)). Those
        placeholders stay in the signature, unused.
    module_masks: {fqn: (mask, source)}; defaults to collect_module_masks(root).
    act_modes: {fqn: "dynamic_int8" | "weight_only"} chosen by a calibration, for the layers whose
        activation setting is "auto" (without it, "auto" layers use dynamic_int8, noted in the report).
    """
    config = as_config(config)
    graph_root = root
    root = root if root is not None else gm
    if module_masks is None:
        module_masks = collect_module_masks(root)
    report = ConversionReport(capture=capture)
    lowering = LayerLowering(config, report, module_masks=module_masks, act_modes=act_modes, root=root)
    holders: dict = {}  # id(lowered) -> holder submodule name
    used_attr_nodes: set = set()
    for match in find_linear_matches(gm, resolve_placeholder, fuse_relu=True):
        module = match.module if match.module is not None else _lookup_module(root, match.fqn)
        use = lowering.lower(match.fqn, match.weight.tensor, match.bias.tensor if match.bias is not None else None,
                             module=module, relu_in_module=match.relu_in_module,
                             relu_after=match.relu_node is not None, matched=_describe(match),
                             weight_transposed=match.weight_transposed)
        if use is None:
            continue
        holder = holders.get(id(use.lowered))
        if holder is None:
            holder = holders[id(use.lowered)] = _holder_name(gm, use.fqn)
            gm.add_submodule(holder, SparseQuantLinear(use.packed, relu=use.relu, act_mode=use.activation))
        for ref in (match.weight, match.bias):
            if ref is not None and ref.node is not None:
                used_attr_nodes.add(ref.node)
        _emit(gm, match, holder, use)
    _drop_unused_fp32(gm, used_attr_nodes)
    if graph_root is not None and graph_root is not gm:
        report_left_out(graph_root, report, capture)
    gm.graph.lint()
    gm.recompile()
    return report


def convert_dynamo_graph(gm: fx.GraphModule, example_inputs, config: Optional[SparseQuantConfig] = None, *,
                         root: Optional[nn.Module] = None) -> tuple[fx.GraphModule, ConversionReport]:
    """The pass for a torch.compile backend: rewrites a copy of the Dynamo graph (parameters are
    graph inputs, packed at this moment) and returns it as a *fresh* GraphModule holding the packed
    buffers (Inductor refuses get_attr buffers on Dynamo's own GraphModule: they are not in its
    param_name_to_source), plus the report. Dynamo's graph module is left untouched. `root`: the
    compiled module, for module-based selection and module-carried masks (layer names come from
    Dynamo's sources without it)."""
    from ..patterns import dynamo_param_resolver

    fresh = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # copies the attributes get_attr nodes read
    fresh.meta.update(gm.meta)
    report = convert_graph(fresh, config, root=root, capture="dynamo",
                           resolve_placeholder=dynamo_param_resolver(fresh, example_inputs, root=root))
    return fresh, report
