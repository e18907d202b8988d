"""Which blocks a layer keeps. First found wins:
1. the config's explicit `masks[fqn]`;
2. a `mask` on the module's `qconfig` (the seed's convention);
3. a torch.ao.pruning `FakeSparsity` parametrization on `weight`;
4. torch.nn.utils.prune's `weight_mask` (with `weight_orig`);
5. block-magnitude pruning (L1/L2 norm per block) when the config asks for a target sparsity;
6. else every block holding a non-zero weight.
A given element mask that is not block-structured is an error naming the layer, or (config
`on_unstructured_mask="coarsen"`) coarsened: a block is kept when it keeps any weight, the pruned
weights are zeroed, and a warning says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..format import block_view, to_block_mask

SOURCE_CONFIG = "config.masks"
SOURCE_QCONFIG = "qconfig.mask"
SOURCE_FAKE_SPARSITY = "ao.pruning FakeSparsity"
SOURCE_PRUNE = "nn.utils.prune"
SOURCE_NONE = "none (zero blocks only)"


@dataclass
class LayerMask:
    block_mask: torch.Tensor   # bool [ceil(N/rb), ceil(K/cb)]
    weight: torch.Tensor       # the fp32 weight with every pruned weight zeroed
    source: str


def _fake_sparsity_mask(module: nn.Module) -> Optional[torch.Tensor]:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if type(p).__name__ == "FakeSparsity" and isinstance(getattr(p, "mask", None), torch.Tensor):
            return p.mask
    return None


def module_mask(module: nn.Module) -> Optional[tuple[torch.Tensor, str]]:
    """The mask a module carries (sources 2-4 above), or None."""
    qconfig_mask = getattr(getattr(module, "qconfig", None), "mask", None)
    if isinstance(qconfig_mask, torch.Tensor):
        return qconfig_mask, SOURCE_QCONFIG
    fake = _fake_sparsity_mask(module)
    if fake is not None:
        return fake, SOURCE_FAKE_SPARSITY
    if isinstance(getattr(module, "weight_mask", None), torch.Tensor) and hasattr(module, "weight_orig"):
        return module.weight_mask, SOURCE_PRUNE
    return None


def collect_module_masks(model: nn.Module) -> dict[str, tuple[torch.Tensor, str]]:
    """{layer fqn: (mask, source)} for every module carrying a mask; LinearReLU's mask is also
    filed under its inner linear's name ("lr.0")."""
    found = {}
    for fqn, module in model.named_modules():
        m = module_mask(module)
        if m is not None:
            found[fqn] = (m[0].detach().clone(), m[1])
    for fqn, module in model.named_modules():
        if type(module).__name__ == "LinearReLU" and fqn in found:
            found.setdefault(f"{fqn}.0" if fqn else "0", found[fqn])
    return found


def strip_reparametrizations(model: nn.Module) -> None:
    """Bakes pruning parametrizations / prune hooks into plain `weight` parameters, so every IR
    sees a constant weight (call collect_module_masks first: this drops the masks)."""
    from torch.nn.utils import prune

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def block_magnitude_mask(weight: torch.Tensor, block, sparsity: float, norm: str) -> torch.Tensor:
    """Drops the round(sparsity * n_blocks) blocks of smallest L1/L2 norm (ties: lowest index first)."""
    blocks = block_view(weight.detach().float(), block)
    norms = blocks.abs().sum(dim=(2, 3)) if norm == "l1" else blocks.pow(2).sum(dim=(2, 3)).sqrt()
    n_drop = int(round(sparsity * norms.numel()))
    keep = torch.ones(norms.numel(), dtype=torch.bool)
    order = torch.argsort(norms.flatten(), stable=True)
    keep[order[:n_drop]] = False
    return keep.reshape(norms.shape)


def _expand(block_mask: torch.Tensor, shape, block) -> torch.Tensor:
    rb, cb = block
    n, k = shape
    return block_mask.repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:n, :k]


def choose_mask(fqn: str, weight: torch.Tensor, block, target_sparsity, prune_norm: str,
                config_masks: dict, module_masks: dict, on_unstructured: str) -> LayerMask:
    weight = weight.detach().float()
    n, k = weight.shape
    given, source = None, None
    if fqn in config_masks:
        given, source = config_masks[fqn], SOURCE_CONFIG
    elif fqn in module_masks:
        given, source = module_masks[fqn]
    if given is None:
        if target_sparsity is not None:
            bm = block_magnitude_mask(weight, block, target_sparsity, prune_norm)
            source = f"magnitude {prune_norm} {target_sparsity:g}"
        else:
            bm = block_view(weight, block).ne(0).any(dim=3).any(dim=2)
            source = SOURCE_NONE
        return LayerMask(bm, weight * _expand(bm, (n, k), block), source)
    given = given.detach().cpu()
    try:
        bm = to_block_mask(given, (n, k), block, name=f"layer {fqn!r} ({source})")
    except ValueError as e:
        if on_unstructured != "coarsen" or tuple(given.shape) != (n, k):
            raise ValueError(f"{e}. Give a block-structured mask, or set "
                             f"SparseQuantConfig(on_unstructured_mask='coarsen')") from None
        kept = block_view((given != 0).to(torch.int8), block).sum(dim=(2, 3))
        bm = kept > 0
        rb, cb = block
        partial = int(((kept > 0) & (kept < rb * cb)).sum())
        warnings.warn(f"sqfx: layer {fqn!r}: the mask from {source} is not block-structured for block "
                      f"{rb}x{cb}; coarsened it: {partial} partly-kept block(s) are stored whole, with "
                      f"their pruned weights set to zero", stacklevel=2)
    w = weight * _expand(bm, (n, k), block)
    if tuple(given.shape) == (n, k):
        w = w * (given != 0)
    return LayerMask(bm, w, source)
