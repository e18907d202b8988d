"""`sqfx.sparsify(model, data, config)`: a dense model in, the same architecture out, its linear
weights pruned to block masks (zeroed), with:
- `model.sqfx_masks`: {fqn: bool block mask}, the `SparseQuantConfig(masks=...)` form that
  prepare_and_convert consumes (the zeroed weights alone also convert to the same kept blocks);
- `model.sqfx_sparsify_report`: a SparsifyReport (per layer: sparsity, method, reconstruction error).
With recovery.schedule="gradual" the one-shot step only decides each layer's block count (and the
report's one-shot columns); recovery then prunes gradually from the dense weights to those counts,
and sqfx_masks are its final masks.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from ..prepare import copy_model
from ..lowering.mask import _expand
from .allocate import allocate, measure_sensitivity
from .capture import capture_inputs, layer_groups
from .config import SparsifyConfig
from .data import as_calls, output_tensor
from .loss import distill_loss
from .methods import prune_weight, reconstruction_error
from .recover import recover
from .report import SparsifiedLayer, SparsifyReport

try:
    from tqdm.auto import tqdm
except ImportError:
    tqdm = None

LOSS_CALLS = 32  # data items the report's output loss is measured on


def _bar(total: int, desc: str, enabled: bool):
    if tqdm is None or not enabled:
        return None
    return tqdm(total=total, desc=desc, unit="layer")


def selected_linears(model: nn.Module, config: SparsifyConfig) -> dict[str, nn.Linear]:
    """The nn.Linear layers the config selects; an error if a block does not divide one of them."""
    layers = {fqn: m for fqn, m in model.named_modules() if isinstance(m, nn.Linear) and config.selects(fqn, m)}
    if not layers:
        raise ValueError("sqfx.sparsify: no nn.Linear layer is selected (check the config's include / exclude)")
    rb, cb = config.block
    for fqn, m in layers.items():
        n, k = m.weight.shape
        if n % rb or k % cb:
            raise ValueError(f"sqfx.sparsify: block {rb}x{cb} does not divide layer {fqn!r}'s weight {n}x{k}; "
                             f"choose a block that divides it, or exclude the layer")
        if m.weight.dtype != torch.float32:
            raise ValueError(f"sqfx.sparsify: layer {fqn!r} has weight dtype {m.weight.dtype}; sparsify works on "
                             f"float32 models")
    return layers


@torch.no_grad()
def _output_loss(model, calls, teacher) -> float:
    return float(sum(distill_loss(c.run(model), t, c) for c, t in zip(calls, teacher)) / len(calls))


def sparsify(model: nn.Module, data, config: Optional[SparsifyConfig] = None, *, recovery_data=None,
             inplace: bool = False) -> nn.Module:
    """Prunes `model`'s selected linears to block masks by config.method (see SparsifyConfig) using
    `data` (an iterable of model inputs: tensors, tuples of positional arguments or dicts of
    keyword arguments; no labels), then optionally distils it toward the dense model.
    recovery_data: the distillation data of config.recovery (same forms), default `data`; it
    can be larger than the calibration set (recovery needs broad text, calibration does not).
    Returns the pruned model (a copy unless inplace=True)."""
    cpu0 = time.process_time()
    config = SparsifyConfig() if config is None else config
    if not isinstance(config, SparsifyConfig):
        raise TypeError(f"sqfx.sparsify: config must be a SparsifyConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"sqfx.sparsify expects an nn.Module, got {type(model).__name__}")
    calls = as_calls(data)
    recovery_calls = calls if recovery_data is None else as_calls(recovery_data, "recovery_data")
    was_training = model.training
    dense = copy_model(model).eval()
    work = model if inplace else copy_model(model)
    work.eval()
    layers = selected_linears(work, config)
    names = list(layers)
    originals = {n: m.weight.detach().clone() for n, m in layers.items()}
    block, method = config.block, config.method
    loss_calls = calls[:LOSS_CALLS]
    with torch.no_grad():
        teacher = [output_tensor(c.run(dense)).detach() for c in loss_calls]

    dense_stats = None
    fixed = config.layer_sparsity or {}
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ValueError(f"sqfx.sparsify: layer_sparsity names layer(s) {unknown} that are not selected nn.Linear "
                         f"layers")
    if config.allocation == "sensitivity" and not set(names) <= set(fixed):
        dense_stats = capture_inputs(work, calls, names)
        sens_calls = calls[:config.sensitivity_samples]
        bar = _bar(len(names), "sqfx sensitivity", config.progress)
        sensitivity = measure_sensitivity(work, layers, dense_stats, sens_calls, teacher[:len(sens_calls)]
                                          if len(sens_calls) <= len(teacher) else
                                          [output_tensor(c.run(dense)).detach() for c in sens_calls],
                                          config.sensitivity_grid, method, block, config.damp, config.window, bar)
        if bar is not None:
            bar.close()
        n_blocks = {n: originals[n].numel() // (block[0] * block[1]) for n in names}
        targets = allocate(sensitivity, n_blocks, config.sensitivity_grid, config.target_sparsity,
                           config.max_layer_sparsity)
    else:
        sensitivity = {}
        targets = {n: config.target_sparsity for n in names}
    targets.update(fixed)

    if method != "magnitude" and config.sequential:
        groups = layer_groups(work, calls[0], names)
    else:
        groups = [names]
        if dense_stats is None:
            dense_stats = capture_inputs(work, calls, names)
    rows, masks = {}, {}
    bar = _bar(len(names), f"sqfx sparsify ({method})", config.progress)
    for group in groups:
        stats = dense_stats if len(groups) == 1 else capture_inputs(work, calls, group, stop_early=True)
        for name in group:
            weight, mask = prune_weight(method, originals[name], stats[name], block, targets[name],
                                        config.damp, config.window)
            layers[name].weight.data.copy_(weight)
            masks[name] = mask
            rows[name] = SparsifiedLayer(name, tuple(weight.shape), block, 1.0 - float(mask.float().mean()), method,
                                         reconstruction_error(originals[name], weight, stats[name]),
                                         sensitivity.get(name))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    report = SparsifyReport(method, config.allocation, config.target_sparsity, [rows[n] for n in names])
    report.loss_one_shot = report.loss_final = _output_loss(work, loss_calls, teacher)

    if config.recovery is not None:
        element_masks = {n: _expand(masks[n], originals[n].shape, block) for n in names}
        report.recovery = recover(work, dense, recovery_calls, element_masks, config.recovery, block)
        report.recovery.pop("losses")
        masks = report.recovery.pop("masks") or masks  # gradual: its own masks, the same block counts
        report.loss_final = _output_loss(work, loss_calls, teacher)
    work.train(was_training)
    report.cpu_seconds = time.process_time() - cpu0
    work.sqfx_masks = masks
    work.sqfx_sparsify_report = report
    return work
