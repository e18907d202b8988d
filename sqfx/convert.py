"""`sqfx.prepare_and_convert`: capture the model, rewrite its linears, report what happened.

Capture paths, tried in order (the report's `capture` says which one ran):
1. `torch.fx.symbolic_trace` -> an eager GraphModule;
2. `torch.export.export(strict=False)` with `example_inputs` -> `ExportedProgram.module()`
   (pre-decomposition ATen: aten.linear.default / aten.relu.default);
3. module by module: every selected nn.Linear / LinearReLU becomes a SparseQuantLinear (no
   ReLU fusion across modules here, except LinearReLU's own).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import fx, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .config import SparseQuantConfig, as_config
from .lowering import ConversionReport, LayerReport, SkippedLayer, convert_graph, lower_layer
from .lowering.mask import collect_module_masks, strip_reparametrizations
from .nn import SparseQuantLinear
from .patterns.linear_relu import _is_linear_relu_module, _is_plain_linear


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _copy_model(model: nn.Module) -> nn.Module:
    """deepcopy that also copies modules holding non-leaf tensor attributes (torch.nn.utils.prune
    keeps `weight` as a computed tensor, which plain deepcopy refuses)."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _swap_modules(model: nn.Module, config: SparseQuantConfig, module_masks: dict, report: ConversionReport):
    cache = {}
    inside_fused = set()
    for fqn, module in list(model.named_modules()):
        fused = _is_linear_relu_module(module)
        if fused:
            inside_fused.add(f"{fqn}.0" if fqn else "0")
        if not (fused or _is_plain_linear(module)) or fqn in inside_fused:
            continue
        if isinstance(module, NonDynamicallyQuantizableLinear):
            # nn.MultiheadAttention reads out_proj.weight itself instead of calling the module.
            report.skipped.append(SkippedLayer(fqn, "its parent reads the weight directly "
                                                    "(NonDynamicallyQuantizableLinear), so it cannot be swapped"))
            continue
        linear = module[0] if fused else module
        name = f"{fqn}.0" if fused else fqn
        out_features, in_features = linear.weight.shape
        reason = config.skip_reason(name, linear, in_features, out_features)
        if reason is None and linear.weight.dtype != torch.float32:
            reason = f"weight dtype {linear.weight.dtype}: sqfx converts float32 layers"
        if reason is not None:
            report.skipped.append(SkippedLayer(name, reason))
            continue
        settings = config.settings_for(name)
        key = (id(linear.weight), id(linear.bias), settings.block, settings.target_sparsity, settings.prune_norm,
               settings.per_channel, id(settings.observer), name if name in config.masks or name in module_masks else None)
        shared_with = cache.get(key, (None, None))[0]
        lowered = cache[key][1] if shared_with else lower_layer(
            name, linear.weight, linear.bias, settings, config, module_masks)
        cache.setdefault(key, (name, lowered))
        new = SparseQuantLinear(lowered.packed, relu=fused)
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        p = lowered.packed
        report.layers.append(LayerReport(
            fqn=name, in_features=in_features, out_features=out_features, block=p.block, sparsity=p.sparsity,
            scheme=lowered.scheme, relu_fused=fused, sqnr_db=lowered.sqnr_db, mask_source=lowered.mask_source,
            matched="LinearReLU module" if fused else "nn.Linear module", shared_with=shared_with))
    return model


def prepare_and_convert(model: nn.Module, config: Optional[SparseQuantConfig] = None, example_inputs=None,
                        inplace: bool = False) -> nn.Module:
    """Converts the model's linear layers to block-sparse int8 `sqfx.qlinear_dynamic` calls.

    Returns the converted module (eval mode, runs eagerly, inference only); its report is
    `converted.sqfx_report` (a ConversionReport; print it for a table). The input model is not
    changed unless `inplace=True` (or config.inplace): then its modules are converted where
    they stand when the module-swap path runs, and its weights are otherwise consumed.

    example_inputs: a tuple of inputs, needed only when symbolic_trace cannot trace the model
    (then torch.export non-strict is used).
    """
    config = as_config(config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"sqfx.prepare_and_convert expects an nn.Module, got {type(model).__name__}")
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    inplace = inplace or config.inplace
    work = model if inplace else _copy_model(model)
    work.eval()
    module_masks = collect_module_masks(work)
    strip_reparametrizations(work)
    notes = []
    gm, capture = None, None
    try:
        gm, capture = fx.symbolic_trace(work), "symbolic_trace"
    except Exception as e:  # noqa: BLE001 -- any trace failure means: try the next path
        notes.append(f"symbolic_trace failed ({_first_line(e)})")
    if gm is None and example_inputs is not None:
        try:
            with torch.no_grad():
                ep = torch.export.export(work, example_inputs, strict=False)
            gm, capture = ep.module(), "torch.export"
        except Exception as e:  # noqa: BLE001
            notes.append(f"torch.export(strict=False) failed ({_first_line(e)})")
    elif gm is None:
        notes.append("no example_inputs, so torch.export was not tried")
    if gm is not None:
        report = convert_graph(gm, config, root=work, module_masks=module_masks, capture=capture)
        converted = gm
        seen = set(report.converted) | {s.fqn for s in report.skipped}
        for fqn, module in work.named_modules():
            if isinstance(module, nn.Linear) and fqn not in seen and not any(
                    name.startswith(fqn + ".") for name in seen):
                report.skipped.append(SkippedLayer(fqn, f"not called as a linear in the {capture} graph "
                                                        "(e.g. inside nn.MultiheadAttention)"))
    else:
        report = ConversionReport(capture="module_swap")
        converted = _swap_modules(work, config, module_masks, report)
    report.notes = notes + report.notes
    if capture != "torch.export":  # ExportedProgram.module() refuses .eval(); it was traced in eval mode
        converted.eval()
    converted.sqfx_report = report
    return converted
