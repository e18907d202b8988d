"""Random layers pruned to 1x4 blocks by magnitude, the way a pruned model's linears look."""
from __future__ import annotations

import math

import torch

BLOCK = (1, 4)


def random_weight(out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaiming-like fp32 weight [out, in] and a small bias, reproducible from the seed."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)
    b = torch.randn(out_features, generator=g) * 0.1
    return w, b


def magnitude_element_mask(weight: torch.Tensor, sparsity: float, block=BLOCK) -> torch.Tensor:
    """Element mask (bool, weight's shape) keeping the (1 - sparsity) blocks of largest L1 norm:
    sqfx's own magnitude pruning (sqfx.lowering.block_magnitude_mask), expanded to elements.

    The layer's width must be a multiple of col_block (all benchmark shapes are), so every
    block is whole.
    """
    from sqfx.lowering import block_magnitude_mask as library_mask

    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    rb, cb = block
    n, k = weight.shape
    if n % rb or k % cb:
        raise ValueError(f"shape {n}x{k} is not a whole number of {rb}x{cb} blocks")
    keep = library_mask(weight, block, sparsity, "l1")
    return keep.repeat_interleave(rb, dim=0).repeat_interleave(cb, dim=1)


def parse_shape(text: str) -> tuple[int, int]:
    """'3072x768' -> (out_features=3072, in_features=768)."""
    try:
        out_f, in_f = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape must look like OUTxIN (e.g. 3072x768), got {text!r}") from None
    if out_f <= 0 or in_f <= 0:
        raise ValueError(f"shape sizes must be positive, got {text!r}")
    return out_f, in_f
