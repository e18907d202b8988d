"""Shared helpers for the hardening tests: random valid packed layers and exact comparisons."""
from __future__ import annotations

import torch

import sqfx
from sqfx import reference
from sqfx_testing import assert_same  # noqa: F401  (the one bit-exact check, re-exported for the op tests)

OP = torch.ops.sqfx.qlinear_dynamic


def random_packed(n, k, block, density=0.5, bias=True, seed=0, per_channel=True):
    """A valid PackedLinear of shape [n, k]: random weights, random block mask."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=g)
    n_rb, n_cb = -(-n // block[0]), -(-k // block[1])
    mask = torch.rand(n_rb, n_cb, generator=g) < density
    b = torch.randn(n, generator=g) if bias else None
    return sqfx.pack(weight, mask=mask, block=block, bias=b, per_channel=per_channel)


def run_op(packed, x, relu=False, in_features=None):
    return OP(x, *packed.tensors(), packed.in_features if in_features is None else in_features, relu)


def run_ref(packed, x, relu=False):
    return reference.qlinear_dynamic(x, *packed.tensors(), packed.in_features, relu)
