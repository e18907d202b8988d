"""Choosing each layer's activation mode from a short calibration run.

Two modes (see sqfx.config.ACT_MODES):
- "dynamic_int8": activations quantized per row to uint8 on the fly, integer kernel
  (sqfx::qlinear_dynamic). Fast at large batch; loses accuracy where a row holds outliers,
  since one scale per row must cover the outlier and the small values alike.
- "weight_only": fp32 activations x int8 weights dequantized on the fly (sqfx::qlinear_weight_only).
  Exact activations; costs little where the layer is memory-bound on its weights (small M).

`choose_activation_modes` runs the fp32 model once on calibration inputs, captures every
selected linear's input, and per layer measures the SQNR of the dynamic-int8 output against the
weight-only output (the same packed int8 weight, so the number isolates the activation
quantization). A layer whose SQNR is below `threshold_db` gets "weight_only". In transformer
encoders these are the FFN down-projections, whose post-GELU inputs carry outliers.

sqfx.prepare calls it with the door's config (duck-typed: `skip_reason(fqn, module, in, out)`,
`settings_for(fqn).block / .per_channel`, `masks`); it also runs on its own with defaults.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .config import ACT_MODES, DEFAULT_ACT_THRESHOLD_DB as DEFAULT_THRESHOLD_DB
from .format import pack
from .lowering.report import sqnr_db
from .nn import SparseQuantLinear
from .patterns.linear_relu import linear_like
MAX_CALIBRATION_ROWS = 2048  # rows of each layer's input kept for the comparison


@dataclass(frozen=True)
class LayerSensitivity:
    """What the calibration measured for one linear."""
    sqnr_dynamic_db: float     # dynamic-int8 output vs weight-only output (same int8 weight)
    input_peak_ratio: float    # mean over rows of max|x| / rms(x): large means outliers
    rows: int                  # calibration rows seen


def _layer_settings(config, fqn: str, block, per_channel):
    if config is not None and hasattr(config, "settings_for"):
        s = config.settings_for(fqn)
        return tuple(s.block), bool(s.per_channel)
    return tuple(block), per_channel


def _selected_linears(model: nn.Module, config, names) -> dict:
    out = {}
    for fqn, mod in model.named_modules():
        found = linear_like(mod)
        if found is None:
            continue
        if names is not None and fqn not in names:
            continue
        out_features, in_features = found[0].shape
        if config is not None and hasattr(config, "skip_reason") and config.skip_reason(
                fqn, mod, in_features, out_features) is not None:
            continue
        out[fqn] = mod
    return out


@torch.inference_mode()
def activation_sensitivity(model: nn.Module, example_inputs, config=None, *, masks: Mapping | None = None,
                           block=(1, 4), per_channel: bool = True, names=None) -> dict[str, LayerSensitivity]:
    """Runs `model` (fp32) on `example_inputs` and measures each selected linear (see module doc).

    example_inputs: a tuple of positional args, a dict of keyword args, or one tensor.
    masks: {fqn: mask} (element or block mask), as for sqfx.pack; else config.masks; else none.
    """
    linears = _selected_linears(model, config, names)
    if masks is None:
        masks = getattr(config, "masks", None) or {}
    captured: dict[str, list] = {fqn: [] for fqn in linears}

    def hook(fqn):
        def fn(_mod, args):
            x = args[0]
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                captured[fqn].append(x.detach().reshape(-1, x.shape[-1]).float().cpu())
        return fn

    handles = [mod.register_forward_pre_hook(hook(fqn)) for fqn, mod in linears.items()]
    try:
        from .prepare import run_example

        run_example(model, example_inputs)
    finally:
        for h in handles:
            h.remove()

    result = {}
    for fqn, mod in linears.items():
        if not captured[fqn]:
            continue  # the layer did not run on these inputs: no evidence, the caller keeps its default
        x = torch.cat(captured[fqn])
        if x.shape[0] > MAX_CALIBRATION_ROWS:
            x = x[torch.linspace(0, x.shape[0] - 1, MAX_CALIBRATION_ROWS).long()]
        blk, pc = _layer_settings(config, fqn, block, per_channel)
        weight, bias = linear_like(mod)
        packed = pack(weight.detach().float(), mask=masks.get(fqn), block=blk, per_channel=pc,
                      bias=None if bias is None else bias.detach().float())
        args = (packed.values, packed.row_ptr, packed.col_idx, packed.w_scale)
        y_wo = torch.ops.sqfx.qlinear_weight_only(x, *args, packed.bias, packed.in_features, False)
        y_dyn = torch.ops.sqfx.qlinear_dynamic(x, *args, packed.w_sum, packed.bias, packed.in_features, False)
        rms = x.pow(2).mean(dim=1).sqrt().clamp(min=1e-30)
        peak = float((x.abs().amax(dim=1) / rms).mean())
        result[fqn] = LayerSensitivity(sqnr_db(y_wo, y_dyn), peak, int(x.shape[0]))
    return result


def choose_activation_modes(model: nn.Module, example_inputs, config=None, *,
                            threshold_db: float = DEFAULT_THRESHOLD_DB, masks: Mapping | None = None,
                            block=(1, 4), per_channel: bool = True, names=None,
                            default: str = "dynamic_int8") -> dict[str, str]:
    """{fqn: "dynamic_int8" | "weight_only"} for each selected nn.Linear of `model`.

    "weight_only" where the dynamic-int8 output's SQNR (vs fp32 activations on the same int8
    weight) is below `threshold_db`; `default` for layers the calibration did not reach.
    """
    if default not in ACT_MODES:
        raise ValueError(f"sqfx: default activation mode must be one of {list(ACT_MODES)}, got {default!r}")
    if not (isinstance(threshold_db, (int, float)) and not math.isnan(threshold_db)):
        raise ValueError(f"sqfx: threshold_db must be a number, got {threshold_db!r}")
    sens = activation_sensitivity(model, example_inputs, config, masks=masks, block=block,
                                  per_channel=per_channel, names=names)
    modes = {}
    for fqn in _selected_linears(model, config, names):
        s = sens.get(fqn)
        modes[fqn] = default if s is None else ("weight_only" if s.sqnr_dynamic_db < threshold_db
                                                else "dynamic_int8")
    return modes


def apply_activation_modes(model: nn.Module, modes: Mapping[str, str]) -> nn.Module:
    """Sets `act_mode` on the converted model's SparseQuantLinear layers named in `modes`."""
    for fqn, mode in modes.items():
        if mode not in ACT_MODES:
            raise ValueError(f"sqfx: activation mode for {fqn} must be one of {list(ACT_MODES)}, got {mode!r}")
        try:
            layer = model.get_submodule(fqn)
        except AttributeError:
            raise KeyError(f"sqfx: the converted model has no layer {fqn!r}") from None
        if not isinstance(layer, SparseQuantLinear):
            raise TypeError(f"sqfx: {fqn} is a {type(layer).__name__}, not a SparseQuantLinear")
        layer.act_mode = mode
    return model
