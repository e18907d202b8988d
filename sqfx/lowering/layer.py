"""Step 2 of every door, per linear: skip rules, mask, observe, pack, kernel / mode choice, the
cache of shared weights, the report row. IR-free: the caller emits what it gets (an op node in a
graph, a SparseQuantLinear in a module tree)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import LayerSettings, SparseQuantConfig
from ..format import PackedLinear, pack
from .mask import choose_mask
from .observe import weight_scales
from .report import ConversionReport, LayerReport, SkippedLayer, sqnr_db

AUTO_UNCALIBRATED_NOTE = 'activation="auto" had no calibration inputs here: those layers use dynamic_int8'
MHA_REASON = ("inside nn.MultiheadAttention, whose forward reads its weights directly; left fp32 on "
              "every door, so that all doors convert the same layers")


@dataclass
class LoweredLayer:
    packed: PackedLinear
    mask_source: str
    sqnr_db: float
    scheme: str
    sparsity: float  # fraction of the layer's blocks the mask drops


def lower_layer(fqn: str, weight: torch.Tensor, bias: Optional[torch.Tensor], settings: LayerSettings,
                config: SparseQuantConfig, module_masks: dict) -> LoweredLayer:
    """Mask, observe and pack one layer (the activation mode does not change the packed weight)."""
    chosen = choose_mask(fqn, weight, settings.block, settings.target_sparsity, settings.prune_norm,
                         config.masks, module_masks, config.on_unstructured_mask)
    scales, per_channel = weight_scales(chosen.weight, settings.observer, settings.per_channel, fqn)
    packed = pack(chosen.weight, mask=chosen.block_mask, block=settings.block, per_channel=per_channel,
                  bias=bias, scales=scales, layout=settings.layout)
    packed.validate()
    # The mask's sparsity, not the storage's: the dense layout stores the dropped blocks as zeros.
    return LoweredLayer(packed, chosen.source, sqnr_db(chosen.weight, packed.unpack()),
                        f"int8 {packed.scheme}", 1.0 - float(chosen.block_mask.float().mean()))


@dataclass
class LayerUse:
    """One converted call site: what to emit."""
    fqn: str
    lowered: LoweredLayer
    activation: str              # "dynamic_int8" | "weight_only"
    relu: bool                   # the op applies the ReLU
    shared_with: Optional[str]   # the first layer packed from the same weight, if not this one

    @property
    def packed(self) -> PackedLinear:
        return self.lowered.packed


def inside_multihead_attention(root: Optional[nn.Module], fqn: str) -> bool:
    """Whether the layer `fqn` (e.g. "attn.out_proj", "attn.in_proj_weight") belongs to an
    nn.MultiheadAttention of `root`."""
    if root is None:
        return False
    parts = fqn.split(".")
    for i in range(1, len(parts)):
        try:
            if isinstance(root.get_submodule(".".join(parts[:i])), nn.MultiheadAttention):
                return True
        except AttributeError:
            return False
    return False


class LayerLowering:
    """Lowers the linears of one conversion, in call order, into one report.

    module_masks: {fqn: (mask, source)} carried by the model's modules (sqfx.prepare);
    act_modes: {fqn: mode} from calibration, for layers whose activation is "auto" (None: none ran).
    root: the model, for the nn.MultiheadAttention rule (None for Dynamo graphs without a root).
    """

    def __init__(self, config: SparseQuantConfig, report: ConversionReport, *, module_masks: Optional[dict] = None,
                 act_modes: Optional[dict] = None, root: Optional[nn.Module] = None):
        self.config = config
        self.report = report
        self.module_masks = module_masks or {}
        self.act_modes = act_modes
        self.root = root
        self._cache: dict = {}  # (weight, bias, settings, mask key) -> (first fqn, lowered)

    def skip_reason(self, fqn: str, module, weight: torch.Tensor, in_features: int, out_features: int):
        if inside_multihead_attention(self.root, fqn):
            return MHA_REASON
        reason = self.config.skip_reason(fqn, module, in_features, out_features)
        if reason is None and weight.dtype != torch.float32:
            reason = f"weight dtype {weight.dtype}: sqfx converts float32 layers"
        return reason

    def lower(self, fqn: str, weight: torch.Tensor, bias: Optional[torch.Tensor], *, module=None,
              relu_in_module: bool = False, relu_after: bool = False, matched: str = "",
              weight_transposed: bool = False) -> Optional[LayerUse]:
        """Lowers one call site; None (and a skipped row) when the rules leave it fp32.

        weight: as stored ([out, in]; [in, out] when weight_transposed, as Conv1D / addmm).
        relu_after: a separate ReLU follows that the op may fold (config fuse_relu decides);
        relu_in_module: the ReLU is part of the matched module (LinearReLU), always applied.
        """
        out_features, in_features = weight.shape[::-1] if weight_transposed else weight.shape
        reason = self.skip_reason(fqn, module, weight, in_features, out_features)
        if reason is not None:
            self.report.skipped.append(SkippedLayer(fqn, reason))
            return None
        settings = self.config.settings_for(fqn)
        own_mask = fqn in self.config.masks or fqn in self.module_masks
        key = (id(weight), id(bias), weight_transposed, settings.block, settings.target_sparsity,
               settings.prune_norm, settings.per_channel, id(settings.observer), settings.layout,
               fqn if own_mask else None)
        if key in self._cache:
            shared_with, lowered = self._cache[key]
        else:
            w = weight.t() if weight_transposed else weight
            shared_with, lowered = None, lower_layer(fqn, w, bias, settings, self.config, self.module_masks)
            self._cache[key] = (fqn, lowered)
        activation = settings.activation
        if activation == "auto":
            if self.act_modes is None and AUTO_UNCALIBRATED_NOTE not in self.report.notes:
                self.report.notes.append(AUTO_UNCALIBRATED_NOTE)
            activation = (self.act_modes or {}).get(fqn, "dynamic_int8")
        relu = relu_in_module or (relu_after and settings.fuse_relu)
        p = lowered.packed
        self.report.layers.append(LayerReport(
            fqn=fqn, in_features=in_features, out_features=out_features, block=settings.block,
            sparsity=lowered.sparsity, scheme=lowered.scheme, relu_fused=relu, sqnr_db=lowered.sqnr_db,
            mask_source=lowered.mask_source, matched=matched, shared_with=shared_with, activation=activation,
            kernel=p.kernel_summary("qlinear_weight_only" if activation == "weight_only" else "qlinear_dynamic")))
        return LayerUse(fqn, lowered, activation, relu, shared_with)
