"""The graph rewrite: each match becomes one `torch.ops.sqfx.qlinear_dynamic.default` call whose
packed tensors are `get_attr` buffers on the GraphModule; the fp32 weight leaves the module."""
from __future__ import annotations

import copy
import re
from typing import Optional

import torch
from torch import fx, nn

from .. import ops  # noqa: F401  (the op must be registered before a graph can call it)
from ..config import SparseQuantConfig, as_config
from ..format import PackedLinear
from ..patterns import LinearMatch, find_linear_matches
from ..patterns.linear_relu import PlaceholderResolver
from .layer import lower_layer
from .mask import collect_module_masks
from .report import ConversionReport, LayerReport, SkippedLayer

QLINEAR = torch.ops.sqfx.qlinear_dynamic.default
QLINEAR_WEIGHT_ONLY = torch.ops.sqfx.qlinear_weight_only.default
_PACKED_FIELDS = ("values", "row_ptr", "col_idx", "w_scale", "w_sum", "bias")
_TILED_FIELDS = PackedLinear.TILED_FIELDS  # the op's optional small-M layout


def _describe(match: LinearMatch) -> str:
    node = match.linear_node
    if node.op == "call_module":
        return "LinearReLU module" if match.relu_in_module else "nn.Linear module"
    target = node.target
    return str(target) if isinstance(target, torch._ops.OpOverload) else f"{target.__module__}.{target.__name__}"


def _buffer_prefix(gm: nn.Module, fqn: str) -> str:
    base = "sqfx_" + re.sub(r"[^0-9A-Za-z_]", "_", fqn)
    name, i = base, 1
    while any(hasattr(gm, f"{name}_{f}") for f in _PACKED_FIELDS):
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


def resolve_activation(settings_activation: str, fqn: str, act_modes) -> str:
    """The layer's activation mode: "auto" is looked up in the calibration's choices."""
    if settings_activation != "auto":
        return settings_activation
    return (act_modes or {}).get(fqn, "dynamic_int8")


def _emit(gm: fx.GraphModule, match: LinearMatch, attrs: dict, in_features: int, relu: bool,
          activation: str) -> fx.Node:
    graph = gm.graph
    out = match.output_node
    with graph.inserting_before(match.linear_node):
        used = [f for f in attrs if not (activation == "weight_only" and (f == "w_sum" or f in _TILED_FIELDS))]
        g = {f: (graph.get_attr(attrs[f]) if attrs[f] is not None else None) for f in used}
        if activation == "weight_only":
            node = graph.call_function(QLINEAR_WEIGHT_ONLY, (
                match.input_node, g["values"], g["row_ptr"], g["col_idx"], g["w_scale"], g["bias"],
                in_features, relu))
        else:
            tiled = tuple(g[f] for f in _TILED_FIELDS) if g.get("tile_ptr") is not None else ()
            node = graph.call_function(QLINEAR, (
                match.input_node, g["values"], g["row_ptr"], g["col_idx"], g["w_scale"], g["w_sum"],
                g["bias"], in_features, relu, *tiled))
    node.meta.update({k: v for k, v in out.meta.items() if k in ("val", "example_value", "tensor_meta",
                                                                   "stack_trace", "nn_module_stack")})
    out.replace_all_uses_with(node)
    if match.relu_node is not None:
        graph.erase_node(match.relu_node)
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


def convert_graph(gm: fx.GraphModule, config: Optional[SparseQuantConfig] = None, *,
                  root: Optional[nn.Module] = None,
                  resolve_placeholder: Optional[PlaceholderResolver] = None,
                  module_masks: Optional[dict] = None,
                  capture: str = "graph",
                  act_modes: Optional[dict] = None) -> ConversionReport:
    """Rewrites every selected linear (+ReLU) of `gm` in place; returns the report.

    gm: a GraphModule from torch.fx.symbolic_trace, a Dynamo backend, or `ExportedProgram.module()`
        (pre-decomposition aten). Packed tensors are registered as buffers on gm.
    root: the model the graph came from, used to find modules by fqn (for filter_fn, include /
        exclude by type, and masks carried by modules). Defaults to gm.
    resolve_placeholder: node -> (fqn, tensor) | None for graphs whose parameters are inputs
        (Dynamo: sqfx.patterns.dynamo_param_resolver(gm, example_inputs, root)). Those
        placeholders stay in the signature, unused.
    module_masks: {fqn: (mask, source)}; defaults to collect_module_masks(root).
    act_modes: {fqn: "dynamic_int8" | "weight_only"} chosen by a calibration, for the layers whose
        activation setting is "auto" (without it, "auto" layers use dynamic_int8, noted in the report).
    """
    config = as_config(config)
    root = root if root is not None else gm
    if module_masks is None:
        module_masks = collect_module_masks(root)
    report = ConversionReport(capture=capture)
    cache: dict = {}  # (weight, bias, settings) -> (buffer names, first fqn, lowered)
    used_attr_nodes: set = set()
    auto_noted = False
    for match in find_linear_matches(gm, resolve_placeholder, fuse_relu=True):
        module = match.module if match.module is not None else _lookup_module(root, match.fqn)
        out_features, in_features = match.shape
        reason = config.skip_reason(match.fqn, module, in_features, out_features)
        if reason is None and match.weight.tensor.dtype != torch.float32:
            reason = f"weight dtype {match.weight.tensor.dtype}: sqfx converts float32 layers"
        if reason is not None:
            report.skipped.append(SkippedLayer(match.fqn, reason))
            continue
        settings = config.settings_for(match.fqn)
        if match.relu_node is not None and not settings.fuse_relu:
            match.relu_node = None
        bias = match.bias.tensor if match.bias is not None else None
        key = (id(match.weight.tensor), id(bias), settings.block, settings.target_sparsity,
               settings.prune_norm, settings.per_channel, id(settings.observer),
               match.fqn if (match.fqn in config.masks or match.fqn in module_masks) else None)
        shared_with = None
        if key in cache:
            attrs, shared_with, lowered = cache[key]
        else:
            lowered = lower_layer(match.fqn, match.weight.tensor, bias, settings, config, module_masks)
            prefix = _buffer_prefix(gm, match.fqn)
            attrs = {}
            tiled = lowered.packed.tiled() or (None,) * len(_TILED_FIELDS)
            for f, t in zip(_PACKED_FIELDS + _TILED_FIELDS, lowered.packed.tensors() + tuple(tiled)):
                if t is None:
                    attrs[f] = None
                else:
                    gm.register_buffer(f"{prefix}_{f}", t)
                    attrs[f] = f"{prefix}_{f}"
            cache[key] = (attrs, match.fqn, lowered)
        for ref in (match.weight, match.bias):
            if ref is not None and ref.node is not None:
                used_attr_nodes.add(ref.node)
        activation = resolve_activation(settings.activation, match.fqn, act_modes)
        if settings.activation == "auto" and act_modes is None and not auto_noted:
            report.notes.append('activation="auto" had no calibration inputs here: those layers use dynamic_int8')
            auto_noted = True
        _emit(gm, match, attrs, in_features, match.relu, activation)
        p = lowered.packed
        report.layers.append(LayerReport(
            fqn=match.fqn, in_features=in_features, out_features=out_features, block=settings.block,
            sparsity=lowered.sparsity, scheme=lowered.scheme, relu_fused=match.relu, sqnr_db=lowered.sqnr_db,
            mask_source=lowered.mask_source, matched=_describe(match), shared_with=shared_with,
            activation=activation, kernel=p.kernel if activation == "dynamic_int8" else "weight_only"))
    _drop_unused_fp32(gm, used_attr_nodes)
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
