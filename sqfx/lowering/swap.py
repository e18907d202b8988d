"""The module emitter of step 2: every linear-like module (nn.Linear, LinearReLU, transformers'
Conv1D) of a model goes through LayerLowering and is replaced where it stands by a
SparseQuantLinear. The model keeps its class, signature and behaviour (keywords, train / eval,
pickling, generate(), save_pretrained); no ReLU is fused across modules (LinearReLU's own is)."""
from __future__ import annotations

from torch import nn

from ..nn import SparseQuantLinear
from ..patterns.linear_relu import _is_linear_relu_module, is_conv1d, linear_like
from .layer import LayerLowering


def swap_modules(model: nn.Module, lowering: LayerLowering) -> nn.Module:
    inside_fused = set()
    for fqn, module in list(model.named_modules()):
        fused = _is_linear_relu_module(module)
        if fused:
            inside_fused.add(f"{fqn}.0" if fqn else "0")
        found = linear_like(module[0] if fused else module)
        if found is None or fqn in inside_fused:
            continue
        name = f"{fqn}.0" if fused else fqn
        linear = module[0] if fused else module
        transposed = is_conv1d(linear)
        matched = "LinearReLU module" if fused else ("Conv1D module" if transposed else "nn.Linear module")
        use = lowering.lower(name, linear.weight, linear.bias, module=linear, relu_in_module=fused,
                             matched=matched, weight_transposed=transposed)
        if use is None:
            continue
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                SparseQuantLinear(use.packed, relu=use.relu, act_mode=use.activation))
    from .rewrite import report_left_out

    report_left_out(model, lowering.report, "module_swap")  # nn.MultiheadAttention's bare in_proj_weight
    return model
