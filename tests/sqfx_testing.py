"""The shared testing helpers: random packed layers, op / reference calls, the bit-exact check,
graph capture in each IR, numerics bounds, and reading a converted model's packed layers."""
from __future__ import annotations

import copy
import math

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

def random_block_mask(n: int, k: int, block, sparsity: float, generator=None) -> torch.Tensor:
    """A block mask [ceil(n/rb), ceil(k/cb)] with round(sparsity * blocks) blocks dropped."""
    rb, cb = block
    n_rb, n_cb = math.ceil(n / rb), math.ceil(k / cb)
    total = n_rb * n_cb
    drop = round(sparsity * total)
    order = torch.randperm(total, generator=generator)
    mask = torch.ones(total, dtype=torch.bool)
    mask[order[:drop]] = False
    return mask.reshape(n_rb, n_cb)


def random_packed(n, k, block=(1, 4), sparsity=0.5, per_channel=True, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    mask = random_block_mask(n, k, block, sparsity, generator=g)
    return sqfx.pack(weight, mask=mask, block=block, per_channel=per_channel, bias=b), weight, mask


def call_op(packed, x, relu=False):
    return torch.ops.sqfx.qlinear_dynamic(x, *packed.tensors(), packed.in_features, relu)


def call_reference(packed, x, relu=False):
    return sqfx.reference.qlinear_dynamic(x, *packed.tensors(), packed.in_features, relu)


def assert_same(actual, expected):
    """Bit-identical, NaN in the same places (torch.equal treats NaN != NaN)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), "NaN positions differ"
    assert torch.equal(actual[~nan_a], expected[~nan_e]), (actual - expected).abs().max()
