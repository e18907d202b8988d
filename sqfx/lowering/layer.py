"""One layer, IR-free: mask -> observe -> pack, and the numbers the report needs."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import LayerSettings, SparseQuantConfig
from ..format import PackedLinear, pack
from .mask import choose_mask
from .observe import weight_scales


@dataclass
class LoweredLayer:
    packed: PackedLinear
    mask_source: str
    sqnr_db: float
    scheme: str


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    signal = float(reference.double().pow(2).sum())
    noise = float((reference.double() - approx.double()).pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def lower_layer(fqn: str, weight: torch.Tensor, bias: Optional[torch.Tensor], settings: LayerSettings,
                config: SparseQuantConfig, module_masks: dict) -> LoweredLayer:
    chosen = choose_mask(fqn, weight, settings.block, settings.target_sparsity, settings.prune_norm,
                         config.masks, module_masks, config.on_unstructured_mask)
    scales, per_channel = weight_scales(chosen.weight, settings.observer, settings.per_channel, fqn)
    packed = pack(chosen.weight, mask=chosen.block_mask, block=settings.block, per_channel=per_channel,
                  bias=bias, scales=scales)
    packed.validate()
    return LoweredLayer(packed, chosen.source, sqnr_db(chosen.weight, packed.unpack()),
                        f"int8 {packed.scheme}, act {config.activation}")
