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


def random_packed(n, k, block=(1, 4), sparsity=0.5, per_channel=True, bias=True, seed=0, *,
                  layout="sparse", col_dtype=None, return_parts=False):
    """The tests' one builder of random valid packed layers: a PackedLinear [n, k] of randn
    weights (and a randn bias unless bias=False) under a random block mask with exactly
    round(sparsity * blocks) blocks dropped (sparsity 0.0 keeps every block, 1.0 none), all
    drawn from one generator seeded with `seed`. layout goes to sqfx.pack ("dense" stores the
    dropped blocks as zeros); col_dtype recasts col_idx (int16 and int32 are both valid).
    return_parts=True returns (packed, weight, mask) for tests that check pack itself."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    mask = random_block_mask(n, k, block, sparsity, generator=g)
    packed = sqfx.pack(weight, mask=mask, block=block, per_channel=per_channel, bias=b, layout=layout)
    if col_dtype is not None:
        packed.col_idx = packed.col_idx.to(col_dtype)
    return (packed, weight, mask) if return_parts else packed


OP = torch.ops.sqfx.qlinear_dynamic  # the op as user code calls it (QLINEAR is its graph target)


def call_op(packed, x, relu=False, in_features=None):
    """sqfx::qlinear_dynamic on packed's tensors; in_features overrides the layer's own."""
    return OP(x, *packed.tensors(), packed.in_features if in_features is None else in_features, relu)


def call_reference(packed, x, relu=False):
    """sqfx.reference.qlinear_dynamic (the plain-PyTorch oracle) on packed's tensors."""
    return sqfx.reference.qlinear_dynamic(x, *packed.tensors(), packed.in_features, relu)


def assert_same(actual, expected, msg=""):
    """The tests' one bit-exact check: same shape and dtype, NaN in the same places (torch.equal
    treats NaN != NaN) and every other entry equal. msg (e.g. the kernel path) leads the failure."""
    assert actual.shape == expected.shape, f"{msg} shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{msg} dtype {actual.dtype} != {expected.dtype}"
    nan_a, nan_e = torch.isnan(actual), torch.isnan(expected)
    assert torch.equal(nan_a, nan_e), f"{msg} NaN positions differ"
    assert torch.equal(actual[~nan_a], expected[~nan_e]), \
        f"{msg} max |difference| {(actual[~nan_a] - expected[~nan_e]).abs().max()}"
