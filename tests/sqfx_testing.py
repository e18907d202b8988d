"""Helpers shared by the FX-pass tests (models, graph capture in each IR, numerics checks)."""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

import sqfx
from sqfx.lowering import convert_graph
from sqfx.patterns import dynamo_param_resolver

QLINEAR = torch.ops.sqfx.qlinear_dynamic.default


def op_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == QLINEAR]


def relu_flags(gm):
    return [n.args[8] for n in op_nodes(gm)]


def as_reference(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of gm whose op calls run sqfx.reference.qlinear_dynamic (the oracle) instead."""
    ref = copy.deepcopy(gm)
    for n in op_nodes(ref):
        n.target = sqfx.reference.qlinear_dynamic
    ref.recompile()
    return ref


def convert_in_ir(model: nn.Module, example_inputs: tuple, ir: str, config=None):
    """Runs the pass on `model` captured in one IR; returns (callable, report)."""
    model = model.eval()
    if ir == "symbolic_trace":
        gm = fx.symbolic_trace(model)
        return gm, convert_graph(gm, config, root=model)
    if ir == "export":
        gm = torch.export.export(model, example_inputs, strict=False).module()
        return gm, convert_graph(gm, config, root=model)
    if ir == "dynamo":
        captured = {}

        def backend(gm, inputs):
            captured["report"] = convert_graph(
                gm, config, root=model, resolve_placeholder=dynamo_param_resolver(gm, inputs, root=model))
            captured["gm"] = gm
            return gm

        torch._dynamo.reset()
        compiled = torch.compile(model, backend=backend, fullgraph=True)
        with torch.no_grad():
            compiled(*example_inputs)
        return compiled, captured["report"]
    raise ValueError(ir)


IRS = ("symbolic_trace", "dynamo", "export")


def quant_error_bound(x: torch.Tensor, w_masked: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """|y - x @ W^T| bound from int8 rounding: per activation element at most one activation step
    (clamping at the range edge), per weight half a weight step."""
    x2d = x.reshape(-1, x.shape[-1]).double()
    a_step = (x2d.amax(1).clamp(min=0) - x2d.amin(1).clamp(max=0)) / 255.0
    w_half = w_scale.double() / 2
    bound = (x2d.abs() @ torch.ones_like(w_masked.double()).T) * w_half[None, :] \
        + a_step[:, None] * (w_masked.double().abs().sum(1)[None, :] + w_half[None, :] * x2d.shape[1])
    return (bound * 1.01 + 1e-5).reshape(*x.shape[:-1], -1)


def kept_blocks(packed, block):
    """Bool block mask [ceil(N/rb), ceil(K/cb)] of the blocks a converted layer keeps. The dense
    layout (chosen by layout="auto" at low sparsity) stores dropped blocks as zeros, so there the
    mask is read from the values: a kept block whose weights all round to 0 reads as dropped."""
    from sqfx.format import block_view

    if packed.layout == "dense":
        return block_view(packed.unpack(), block).ne(0).any(dim=3).any(dim=2)
    return packed.block_mask()


def packed_layer(converted: nn.Module, fqn: str):
    """The PackedLinear a converted model runs for layer `fqn`: the SparseQuantLinear holder
    `sqfx_<fqn>` of a graph-path model, or the swapped-in module of a module-swap one."""
    import re

    holder = getattr(converted, "sqfx_" + re.sub(r"[^0-9A-Za-z_]", "_", fqn), None)
    if holder is None:
        holder = converted.get_submodule(fqn)
    assert isinstance(holder, sqfx.SparseQuantLinear), (fqn, type(holder))
    return holder.packed
