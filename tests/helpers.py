"""Shared builders for the tests: random block-sparse weights and their packed form."""
from __future__ import annotations

import math

import torch

import sqfx


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
